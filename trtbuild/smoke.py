"""`trtbuild doctor --smoke`: the whole path on the embedded model, briefly, through the real stages.

For fp16 and fp8: compile (trtbuild.compile), validate against the transformers reference
(trtbuild.validation), serve (`trtbuild serve` in a subprocess on a free loopback port, one chat request
over HTTP), bench (a short offline run). One row per variant, one verdict. On a Hopper machine with
TensorRT-LLM this takes a few minutes; with --backend torch it runs the same stages on the torch
runtime and says so, never calling the result a TensorRT engine.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trtbuild.errors import TrtbuildError

SMOKE_VARIANTS = ("fp16", "fp8")
SMOKE_PROFILE = "cpu-tiny"  # the embedded model with the same variants and field names as the H100 profile
SERVE_TIMEOUT_S = 180.0  # engine load in the server process, TensorRT-LLM's MPI start included


@dataclass
class SmokeRow:
    variant: str
    backend: str
    engine: str = ""
    build: str = "not run"
    validate: str = "not run"
    serve: str = "not run"
    bench: str = "not run"
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds


@dataclass
class SmokeResult:
    backend: str
    label: str  # what ran, in words: TensorRT-LLM engines, or the torch backend standing in
    rows: list[SmokeRow]
    seconds: float
    path: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), passed=self.passed)

    @classmethod
    def from_dict(cls, data: dict) -> SmokeResult:
        return cls(backend=data["backend"], label=data["label"], rows=[SmokeRow(**r) for r in data["rows"]],
                   seconds=data["seconds"], path=data.get("path", ""))

    def table(self) -> str:
        head = ("variant", "build", "validate", "serve", "bench", "ok")
        rows = [(r.variant, r.build, r.validate, r.serve, r.bench, "yes" if r.ok else "NO") for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [f"smoke: {self.label}", line(head), line(["-" * w for w in widths]), *map(line, rows)]
        out += [f"  {r.variant}: {e}" for r in self.rows for e in r.errors]
        out.append(f"verdict: {'PASS' if self.passed else 'FAIL'} in {self.seconds:.0f} s ({self.backend} backend)")
        return "\n".join(out)


def label_for(backend: str) -> str:
    if backend == "tensorrt-llm":
        return "TensorRT-LLM engines of builtin:tiny-mistral (fp16, fp8)"
    return "torch backend standing in for TensorRT-LLM (no TensorRT engine is built or run)"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:240]}" if text else type(exc).__name__


def run_smoke(ws, backend: str, progress: bool = False, echo: Callable[[str], None] = lambda line: None,
              variants: tuple[str, ...] = SMOKE_VARIANTS) -> SmokeResult:
    """Build, validate, serve and bench each variant of the embedded model; never raises for a stage that
    fails (the row says why), only for a setup error before the first stage."""
    from trtbuild.compile import compile_engine, profile_source
    from trtbuild.config import load_profile
    from trtbuild.manifest import Manifest
    from trtbuild.workspace import atomic_write_json

    start = time.perf_counter()
    profile = load_profile(SMOKE_PROFILE)
    out = ws.report_dir(f"doctor-smoke-{backend}-{Manifest.now().replace(':', '')}")
    source = profile_source(ws, profile, progress=progress)
    rows = []
    for variant in variants:
        row = SmokeRow(variant, backend)
        rows.append(row)
        echo(f"[{variant}] compile ({backend}) ...")
        clock = time.perf_counter()
        try:
            built = compile_engine(ws, profile.variant(variant), source, backend=backend, progress=progress)
        except Exception as exc:  # a failed stage is a row in the table, not a traceback
            row.build, row.errors = "FAILED", [f"compile: {_short(exc)}"]
            continue
        finally:
            row.seconds["build"] = round(time.perf_counter() - clock, 2)
        engine_dir = built.engine_dir
        row.engine = engine_dir.name
        row.build = "cache hit" if built.cache_hit else f"built {built.seconds:.0f} s"
        for stage, step in (("validate", _validate), ("serve", _serve), ("bench", _bench)):
            echo(f"[{variant}] {stage} ...")
            clock = time.perf_counter()
            try:
                setattr(row, stage, step(ws, engine_dir, profile, out, progress))
            except Exception as exc:
                setattr(row, stage, "FAILED")
                row.errors.append(f"{stage}: {_short(exc)}")
            row.seconds[stage] = round(time.perf_counter() - clock, 2)
        row.ok = not row.errors and row.validate.startswith("pass")
    result = SmokeResult(backend, label_for(backend), rows, round(time.perf_counter() - start, 1),
                         path=str(out / "smoke.json"))
    atomic_write_json(result.path, result.to_dict())
    return result


def _validate(ws, engine_dir: Path, profile, out: Path, progress: bool) -> str:
    from trtbuild.validation import close_references, validate_engine

    try:
        result = validate_engine(ws, engine_dir, profile_thresholds=profile.validation, progress=progress)
    finally:
        close_references()
    why = f" ({'; '.join(result.failures)[:160]})" if not result.passed else ""
    return f"{result.verdict}{why}"


def _serve(ws, engine_dir: Path, profile, out: Path, progress: bool) -> str:
    """`trtbuild serve` on a free loopback port, one chat completion through the real HTTP path."""
    import httpx

    from trtbuild.server.process import ServerProcess

    out.mkdir(parents=True, exist_ok=True)
    with ServerProcess(engine_dir, workspace=ws.root, log_path=out / f"serve-{engine_dir.name}.log") as server:
        sent = time.perf_counter()
        reply = httpx.post(f"{server.base_url}/chat/completions", timeout=60, json={
            "model": server.model, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}]})
        ms = (time.perf_counter() - sent) * 1000
    if reply.status_code != 200:
        raise TrtbuildError(f"POST /v1/chat/completions answered {reply.status_code}: {reply.text[:160]}")
    body = reply.json()
    tokens = body["usage"]["completion_tokens"]
    if not isinstance(body["choices"][0]["message"]["content"], str) or tokens < 1:
        raise TrtbuildError(f"the server answered 200 without generated text: {reply.text[:160]}")
    return f"200, {tokens} tokens in {ms:.0f} ms"


def _bench(ws, engine_dir: Path, profile, out: Path, progress: bool) -> str:
    from trtbuild.bench import WorkloadSpec
    from trtbuild.bench.arrivals import LoadSpec
    from trtbuild.bench.offline import run_offline_bench

    # Short on purpose: a smoke test of the bench path, not a measurement (runs go to the smoke's folder,
    # not the engine's, so they never mix with real benchmark runs in reports).
    spec = WorkloadSpec(input_len=64, output_len=16, num_requests=8, warmup=1)
    result = run_offline_bench(ws, engine_dir, spec, LoadSpec(concurrency=4), out_dir=out / "bench" / engine_dir.name,
                               progress=progress)
    s = result.summary
    if not result.valid or s.counts.get("failed"):
        raise TrtbuildError(f"bench run invalid or with failures: {s.counts}; see {result.path}")
    return f"{s.throughput.get('output_tokens_per_s', 0):.0f} out tok/s"
