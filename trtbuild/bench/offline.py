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
                      out_dir: str | Path | None = None, progress: bool = True, trials: int = 1) -> list[BenchResult]:
    """Benchmark one engine at each load level, `trials` times each (levels interleaved); every level's
    trials are merged into one saved run (trtbuild/bench/trials.py).

    engine: an already loaded Engine (else load_engine(engine_dir)); out_dir: where run directories
    go (default ws.bench_dir(engine_dir))."""
    key = Path(engine_dir) if engine_dir else None
    return run_offline_interleaved(ws, {key: loads}, workload, slo, trials=trials, engines={key: engine} if engine else None,
                                   out_dir=out_dir, progress=progress)[key]


def run_offline_interleaved(ws: Workspace, plan: dict, workload: WorkloadSpec, slo: SLO | None = None, *,
                            trials: int = 1, engines: dict | None = None, out_dir: str | Path | None = None,
                            progress: bool = True) -> dict:
    """plan: {engine_dir: [load levels]}. Runs trial 1 of every engine and level, then trial 2, ... with
    engines and levels rotated each trial, so that a drifting machine (other jobs, clocks, heat) weighs
    on every engine and level alike. Returns {engine_dir: [merged BenchResult per level]}.

    CPU (torch) engines stay loaded between trials; GPU engines are loaded and closed each trial, since
    two TensorRT-LLM executors would split the GPU's memory (each sizes its KV cache from what is free)."""
    from trtbuild.bench.trials import interleave, merge_trials

    if workload.endpoint is not None:
        raise TrtbuildError(f"--endpoint {workload.endpoint} applies to online runs only (--url URL --model NAME); "
                            "offline, the prompt ids go straight to the engine: drop it")
    if trials < 1:
        raise TrtbuildError(f"--trials must be >= 1, got {trials}")
    given = dict(engines or {})
    loaded: dict = {}
    done: dict = {key: [[] for _ in loads] for key, loads in plan.items()}
    context: dict = {}
    try:
        for trial in range(trials):
            for key in interleave(list(plan), trial):
                engine = given.get(key) or loaded.get(key)
                if engine is None:
                    from trtbuild.runtime import load_engine

                    engine = loaded[key] = load_engine(key)
                if key not in context:
                    requests = build_requests(engine.tokenizer, workload)
                    check_fits(requests, engine.info.max_input_len, engine.info.max_seq_len)
                    context[key] = (requests, engine_target(engine, Path(key) if key else None),
                                    Path(key or engine.info.engine_dir))
                requests, target, _ = context[key]
                order = interleave(list(range(len(plan[key]))), trial)
                for i in order:
                    load = plan[key][i]
                    load.check()
                    label = f"bench {target['name']} {_level(load)}" + (f" trial {trial + 1}/{trials}" if trials > 1 else "")
                    done[key][i].append(_one_trial(engine, workload, load, slo, target, requests, label, progress))
                if key in loaded and engine.info.backend != "torch":
                    loaded.pop(key).close()
        out = {}
        for key, per_level in done.items():
            base = Path(out_dir) if out_dir else ws.bench_dir(context[key][2])
            out[key] = []
            for runs in per_level:
                result = merge_trials(runs, slo)
                save_run(ws, base / result.summary.run_id, result)
                out[key].append(result)
        return out
    finally:
        for engine in loaded.values():
            engine.close()


def _one_trial(engine: Engine, workload: WorkloadSpec, load: LoadSpec, slo: SLO | None, target: dict,
               requests: list[BenchRequest], label: str, progress: bool) -> BenchResult:
    from trtbuild.bench.environment import EnvironmentMonitor

    with tqdm(total=len(requests), desc=label, unit="req", disable=not progress, leave=False) as bar:
        with EnvironmentMonitor() as env:
            records, monitor = asyncio.run(run_load(requests, load, make_issue(engine, workload, bar)))
    result = summarize("offline", workload, load, target, records, monitor, slo, _num_gpus(target))
    result.summary.environment = env.result
    return result


def run_offline_bench(ws: Workspace, engine_dir: str | Path | None, workload: WorkloadSpec, load: LoadSpec,
                      slo: SLO | None = None, *, engine: Engine | None = None, out_dir: str | Path | None = None,
                      progress: bool = True, trials: int = 1) -> BenchResult:
    """One offline run (one load level, `trials` times) of one engine, saved under ws.bench_dir(engine_dir)/<run-id>/."""
    return run_offline_sweep(ws, engine_dir, workload, [load], slo, engine=engine, out_dir=out_dir,
                             progress=progress, trials=trials)[0]


def _level(load: LoadSpec) -> str:
    return f"rate={load.request_rate:g}/s" if load.open_loop else f"c={load.concurrency}"


def _num_gpus(target: dict) -> int | None:
    manifest = target.get("manifest") or {}
    if target.get("backend") == "tensorrt-llm" or manifest.get("gpu"):
        return int((manifest.get("build") or {}).get("tp_size") or 1)
    return None
