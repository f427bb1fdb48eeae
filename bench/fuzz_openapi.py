"""Schema-driven fuzzing of `trtbuild serve` with schemathesis: does the server do what /openapi.json says?

    python bench/fuzz_openapi.py --workspace WS --engine fp16 --requests 1000     # starts its own server
    python bench/fuzz_openapi.py --url http://127.0.0.1:8000 --api-key KEY       # or fuzz a running one

schemathesis reads the server's own OpenAPI document and generates requests for every operation: bodies
that fit the schema (positive) and bodies that break it (negative: wrong types, out-of-range values,
unknown fields...). Each response is checked for: no 5xx, a status code the document lists, a documented
content type, a JSON body matching the documented schema, documented headers, and (negative cases) a
4xx answer. Generation requests are capped at max_tokens 4 so 1,000 of them run in about a minute on a
CPU (the cap leaves a schema-invalid max_tokens untouched). Prints one JSON summary; exit status 1 if
any check failed. tests/test_server_openapi.py runs a smaller share of the same in the suite.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

GENERATION = ("/v1/chat/completions", "/v1/completions")
MAX_TOKENS = 4
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "negative_data_rejection")


def cap_generation(case) -> None:
    """Keep a generated request cheap without making it valid or invalid: only a valid, large max_tokens
    is lowered, and a missing one is set (a request without it may generate up to the context length)."""
    if case.operation.path not in GENERATION or not isinstance(case.body, dict):
        return
    body = dict(case.body)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if type(value) is int and value > MAX_TOKENS:
            body[name] = MAX_TOKENS
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS
    case.body = body


def fuzz(url: str, api_key: str | None, requests: int, seed: int = 0) -> dict:
    """Run about `requests` generated requests spread over every operation, positive and negative."""
    import requests as http
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis import checks as all_checks

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    with_input = [op for op in operations if len(op.body) or len(op.query) or len(op.path_parameters)]
    per_run = max(1, requests // max(1, len(with_input) * len(modes)))  # the others have one request to make
    checks = [getattr(all_checks, name) for name in CHECKS]
    stats = {"requests": 0, "statuses": collections.Counter(), "server_errors": 0, "failures": [],
             "operations": len(operations), "no_cases": [], "seconds": 0.0}
    session = http.Session()
    start = time.monotonic()

    def run_operation(operation, mode) -> None:
        strategy = operation.as_strategy(generation_mode=mode)

        @settings(max_examples=per_run, deadline=None, derandomize=True, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(st.data())
        def run(data):
            case = data.draw(strategy)
            cap_generation(case)
            response = case.call(base_url=url, session=session, headers=headers, timeout=60)
            stats["requests"] += 1
            stats["statuses"][response.status_code] += 1
            stats["server_errors"] += response.status_code >= 500
            try:
                case.validate_response(response, checks=checks, headers=headers)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every failed check is collected
                stats["failures"].append({"operation": f"{operation.method.upper()} {operation.path}",
                                          "mode": str(mode), "status": response.status_code,
                                          "body": str(case.body)[:300], "failure": str(exc)[:600]})

        try:
            run()
        except Unsatisfiable:  # e.g. negative cases for an operation that takes no input: there are none
            stats["no_cases"].append(f"{operation.method.upper()} {operation.path} {mode}")

    for operation in operations:
        for mode in modes:
            run_operation(operation, mode)
    stats["seconds"] = round(time.monotonic() - start, 1)
    stats["statuses"] = dict(sorted(stats["statuses"].items()))
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="fuzz this running server instead of starting one")
    parser.add_argument("--api-key", default="fuzz-key")
    parser.add_argument("--workspace", help="workspace holding the engine (with --engine)")
    parser.add_argument("--engine", default="fp16")
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    if args.url:
        stats = fuzz(args.url, args.api_key, args.requests)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from trtbuild.server.process import ServerProcess

        # --max-queue 0: n past the engine's batch is a 400, so no case waits behind a huge one
        server_args = ["--api-key", args.api_key, "--max-queue", "0", "--log-level", "warning"]
        with ServerProcess(args.engine, args.workspace, server_args) as server:
            stats = fuzz(server.url, args.api_key, args.requests)
    print(json.dumps(stats, indent=1))
    return 1 if stats["failures"] or stats["server_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
