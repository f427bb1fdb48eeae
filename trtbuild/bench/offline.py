"""Offline benchmark: requests go straight into an engine through the generation interface.

No HTTP, no server: what is measured is the engine and its scheduler. Token times are the engine's
own stamps (TokenEvent.time_ns, taken when the backend emitted the token), one token per chunk;
queue time comes from RequestTimings; token counts are the engine's ids, cross-checked by re-encoding
the returned text.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tqdm import tqdm

from trtbuild.bench.arrivals import LoadSpec
from trtbuild.bench.metrics import SLO
from trtbuild.bench.results import BenchResult, RequestRecord, save_run
from trtbuild.bench.runner import run_load, summarize
from trtbuild.bench.workload import BenchRequest, WorkloadSpec, build_requests, check_fits
from trtbuild.errors import TrtbuildError
from trtbuild.runtime.interface import ContextLengthExceeded, Engine, SamplingParams
from trtbuild.workspace import Workspace


def engine_target(engine: Engine, engine_dir: Path | None) -> dict:
    """What was measured: the engine's info and, for a workspace engine, its manifest."""
    target = {"kind": "engine", "name": engine.info.name, "variant": engine.info.variant,
              "backend": engine.info.backend, "engine_dir": str(engine_dir) if engine_dir else None,
              "info": engine.info.to_dict(), "manifest": None}
    if engine_dir is not None and (Path(engine_dir) / "manifest.json").is_file():
        from trtbuild.manifest import load_manifest

        target["manifest"] = load_manifest(engine_dir).to_dict()
        target["name"] = Path(engine_dir).name
    return target


def sampling_for(req: BenchRequest, spec: WorkloadSpec) -> SamplingParams:
    """Exact output length: ignore EOS, and ask for exactly output_len tokens (min = max)."""
    exact = spec.ignore_eos
    return SamplingParams(max_tokens=req.output_len, min_tokens=req.output_len if exact else 0,
                          ignore_eos=exact, temperature=spec.temperature)


def make_issue(engine: Engine, spec: WorkloadSpec, bar: tqdm):
    tokenizer = engine.tokenizer

    async def issue(req: BenchRequest, rec: RequestRecord, t0: int) -> None:
        rec.target = engine.info.name
        rec.sent_ns = time.perf_counter_ns() - t0
        try:
            stream = engine.submit(req.prompt_ids, sampling_for(req, spec), request_id=f"bench-{req.index}")
        except ContextLengthExceeded as exc:
            _fail(rec, "context_length", str(exc), t0, bar)
            return
        except ValueError as exc:
            _fail(rec, "invalid_request", str(exc), t0, bar)
            return
        rec.first_byte_ns = time.perf_counter_ns() - t0
        async for batch in stream.aiter_batches():
            rec.chunk_ns.extend(ev.time_ns - t0 for ev in batch if ev.token_id >= 0)
        result = stream.snapshot()
        rec.end_ns = time.perf_counter_ns() - t0
        rec.chunk_tokens = [1] * len(rec.chunk_ns)
        rec.finish_reason = result.finish_reason
        rec.token_counts = {"engine": len(result.token_ids), "usage": None,
                            "client": len(tokenizer.encode(result.text, bos=False))}
        timings = result.timings
        rec.queue_ns = timings.scheduled_ns - timings.arrival_ns if timings.scheduled_ns else None
        if result.finish_reason in ("error", "abort"):
            rec.error_type = "engine_error" if result.finish_reason == "error" else "aborted"
            rec.error = result.error or result.finish_reason
        elif not rec.chunk_ns:
            rec.error_type, rec.error = "empty_response", "the engine returned no token"
        bar.update(1)

    return issue


def _fail(rec: RequestRecord, kind: str, message: str, t0: int, bar: tqdm) -> None:
    rec.error_type, rec.error = kind, message
    rec.end_ns = time.perf_counter_ns() - t0
    bar.update(1)


def run_offline_sweep(ws: Workspace, engine_dir: str | Path | None, workload: WorkloadSpec,
                      loads: list[LoadSpec], slo: SLO | None = None, *, engine: Engine | None = None,
                      out_dir: str | Path | None = None, progress: bool = True) -> list[BenchResult]:
    """Benchmark one engine at each load level (the engine is loaded once); every run is saved.

    engine: an already loaded Engine (else load_engine(engine_dir)); out_dir: where run directories
    go (default ws.bench_dir(engine_dir))."""
    if workload.endpoint is not None:
        raise TrtbuildError(f"--endpoint {workload.endpoint} applies to online runs only (--url URL --model NAME); "
                            "offline, the prompt ids go straight to the engine: drop it")
    owned = engine is None
    if owned:
        from trtbuild.runtime import load_engine

        engine = load_engine(engine_dir)
    try:
        requests = build_requests(engine.tokenizer, workload)
        check_fits(requests, engine.info.max_input_len, engine.info.max_seq_len)
        target = engine_target(engine, Path(engine_dir) if engine_dir else None)
        base = Path(out_dir) if out_dir else ws.bench_dir(Path(engine_dir or engine.info.engine_dir))
        num_gpus = _num_gpus(target)
        results = []
        for load in loads:
            load.check()
            with tqdm(total=len(requests), desc=f"bench {target['name']} {_level(load)}", unit="req",
                      disable=not progress, leave=False) as bar:
                records, monitor = asyncio.run(run_load(requests, load, make_issue(engine, workload, bar)))
            result = summarize("offline", workload, load, target, records, monitor, slo, num_gpus)
            save_run(ws, base / result.summary.run_id, result)
            results.append(result)
        return results
    finally:
        if owned:
            engine.close()


def run_offline_bench(ws: Workspace, engine_dir: str | Path | None, workload: WorkloadSpec, load: LoadSpec,
                      slo: SLO | None = None, *, engine: Engine | None = None, out_dir: str | Path | None = None,
                      progress: bool = True) -> BenchResult:
    """One offline run (one load level) of one engine, saved under ws.bench_dir(engine_dir)/<run-id>/."""
    return run_offline_sweep(ws, engine_dir, workload, [load], slo, engine=engine, out_dir=out_dir,
                             progress=progress)[0]


def _level(load: LoadSpec) -> str:
    return f"rate={load.request_rate:g}/s" if load.open_loop else f"c={load.concurrency}"


def _num_gpus(target: dict) -> int | None:
    manifest = target.get("manifest") or {}
    if target.get("backend") == "tensorrt-llm" or manifest.get("gpu"):
        return int((manifest.get("build") or {}).get("tp_size") or 1)
    return None
