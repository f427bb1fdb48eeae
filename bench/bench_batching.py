"""Batching benchmark: N requests submitted together vs the same N run one after another.

    .venv/bin/python bench/bench_batching.py                 # the cpu-tiny fp16 engine (built if missing)
    .venv/bin/python bench/bench_batching.py fp8 --requests 8 --max-tokens 128 --rounds 3 --json

Each request is greedy with ignore_eos and a fixed max_tokens, so both runs produce exactly the same
tokens (checked) and output tokens per second compare like for like. Rounds alternate the two orders;
the median round is reported. Issue 3's target on the embedded model: concurrent >= 3x sequential.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

QUESTIONS = [
    "What is the capital of France?", "Which city is the capital of Denmark?", "What is machine learning?",
    "Repeat after me: the quick brown fox.", "Write a Python function that returns the square of a number.",
    "Summarize the story of Little Red Riding Hood in one sentence.", "Name three colors of the rainbow.",
    "Why is the sky blue?", "What do bees make?", "Tell me a short story about a cat.",
]


def engine_dir(ws, spec: str | None):
    if spec:
        return ws.resolve_engine(spec)
    from trtbuild.compile import compile_engine
    from trtbuild.config import load_profile
    from trtbuild.models import resolve_source

    profile = load_profile("cpu-tiny")
    source = resolve_source(ws, profile.model.id, profile.model.revision)
    return compile_engine(ws, profile.variant("fp16"), source, backend="torch").engine_dir


def timed(run) -> tuple[float, list]:
    start = time.perf_counter()
    results = run()
    return time.perf_counter() - start, results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", nargs="?", help="engine dir or variant in the workspace [default: cpu-tiny fp16]")
    parser.add_argument("--workspace", default=None, help="workspace root [default: $TRTBUILD_WORKSPACE]")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--min-speedup", type=float, default=0.0, help="exit 1 below this speedup")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from trtbuild.runtime import SamplingParams, load_engine
    from trtbuild.workspace import Workspace

    ws = Workspace(args.workspace)
    path = engine_dir(ws, args.engine)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    with load_engine(path, device=args.device) as engine:
        tok = engine.tokenizer
        prompts = [tok.encode_chat([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
                   for i in range(args.requests)]
        engine.generate(prompts[:2], SamplingParams(max_tokens=8, temperature=0))  # warm up
        rounds = []
        for r in range(args.rounds):
            def sequential():
                return [engine.generate([p], params)[0] for p in prompts]

            def concurrent():
                return engine.generate(prompts, params)
            order = (sequential, concurrent) if r % 2 == 0 else (concurrent, sequential)
            times = {run.__name__: timed(run) for run in order}
            (seq_s, seq), (con_s, con) = times["sequential"], times["concurrent"]
            if [x.token_ids for x in seq] != [x.token_ids for x in con]:
                raise SystemExit("error: batched greedy outputs differ from the sequential ones")
            tokens = sum(len(x.token_ids) for x in con)
            rounds.append({"tokens": tokens, "sequential_s": seq_s, "concurrent_s": con_s,
                           "sequential_tok_s": tokens / seq_s, "concurrent_tok_s": tokens / con_s,
                           "speedup": seq_s / con_s})
        median = sorted(rounds, key=lambda x: x["speedup"])[len(rounds) // 2]
        summary = {"engine": engine.info.name, "backend": engine.info.backend, "device": engine.info.precision.get(
                       "device"), "requests": args.requests, "max_tokens": args.max_tokens, "rounds": rounds,
                   "median": median, "speedups": [round(x["speedup"], 2) for x in rounds],
                   "spread": statistics.pstdev(x["speedup"] for x in rounds)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['engine']} ({summary['backend']} backend), {args.requests} requests x {args.max_tokens} "
              f"tokens, median of {args.rounds} rounds (speedups {summary['speedups']})")
        print(f"sequential: {median['sequential_tok_s']:8.1f} output tok/s  ({median['sequential_s']:.2f} s)")
        print(f"concurrent: {median['concurrent_tok_s']:8.1f} output tok/s  ({median['concurrent_s']:.2f} s)")
        print(f"speedup:    {median['speedup']:8.2f}x  (target >= 3x)")
    return 1 if median["speedup"] < args.min_speedup else 0


if __name__ == "__main__":
    sys.exit(main())
