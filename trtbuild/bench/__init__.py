"""Benchmarks: offline through the generation interface, online against OpenAI-compatible endpoints.

    from trtbuild.bench import WorkloadSpec, LoadSpec, SLO, run_offline_bench
    result = run_offline_bench(ws, engine_dir, WorkloadSpec(input_len=128, output_len=64), LoadSpec(concurrency=4))
    result.summary.throughput["output_tokens_per_s"], result.path

Metric definitions: trtbuild/bench/metrics.py and docs/benchmarks.md.
"""

from __future__ import annotations

from trtbuild.bench.arrivals import LoadSpec, sweep
from trtbuild.bench.metrics import SLO
from trtbuild.bench.results import BenchResult, RequestRecord, RunSummary, load_run
from trtbuild.bench.workload import WorkloadSpec


PROFILE_KEYS = ("input_len", "output_len", "num_requests", "warmup", "seed", "dataset", "concurrency",
                "request_rate", "arrival", "burstiness", "duration", "slo", "trials")


def from_profile(settings: dict) -> tuple[WorkloadSpec, list[LoadSpec], SLO | None]:
    """A profile's [bench] table -> (workload, load levels, SLO) for run_offline_sweep, e.g.
    {input_len = 128, output_len = 64, concurrency = [1, 4], slo = "ttft=500,tpot=50"}."""
    from trtbuild.errors import TrtbuildError

    unknown = set(settings) - set(PROFILE_KEYS)
    if unknown:
        raise TrtbuildError(f"profile [bench]: unknown setting(s) {sorted(unknown)}; known: {', '.join(PROFILE_KEYS)}")

    def levels(value, kind):
        return [kind(v) for v in (value if isinstance(value, list) else [value])] if value is not None else []

    workload = WorkloadSpec.from_dict({k: v for k, v in settings.items() if k in
                                       ("input_len", "output_len", "num_requests", "warmup", "seed", "dataset")})
    loads = sweep(levels(settings.get("concurrency"), int), levels(settings.get("request_rate"), float),
                  settings.get("arrival", "poisson"), float(settings.get("burstiness", 1.0)),
                  settings.get("duration"), int(settings.get("seed", 0)))
    return workload, loads, SLO.parse(settings.get("slo"))


def profile_trials(settings: dict) -> int:
    """A profile's [bench] trials (default 1): how many times `trtbuild run` measures each level."""
    from trtbuild.errors import TrtbuildError

    trials = settings.get("trials", 1)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise TrtbuildError(f"profile [bench]: trials must be a whole number >= 1, got {trials!r}")
    return trials


def run_offline_bench(*args, **kwargs):
    from trtbuild.bench.offline import run_offline_bench as run

    return run(*args, **kwargs)


def run_offline_sweep(*args, **kwargs):
    from trtbuild.bench.offline import run_offline_sweep as run

    return run(*args, **kwargs)


def run_online_bench(*args, **kwargs):
    from trtbuild.bench.online import run_online_bench as run

    return run(*args, **kwargs)


__all__ = ["from_profile", "profile_trials", "LoadSpec", "sweep", "SLO", "BenchResult", "RequestRecord", "RunSummary", "load_run", "WorkloadSpec",
           "run_offline_bench", "run_offline_sweep", "run_online_bench"]
