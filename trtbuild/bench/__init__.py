"""Benchmarks: offline through the generation interface, online against OpenAI-compatible endpoints.

    from trtbuild.bench import WorkloadSpec, LoadSpec, SLO, run_offline_bench
    result = run_offline_bench(ws, engine_dir, WorkloadSpec(input_len=128, output_len=64), LoadSpec(concurrency=4))
    result.summary.throughput["output_tokens_per_s"], result.path

Metric definitions: trtbuild/bench/metrics.py and docs/benchmarks.md.
"""

from trtbuild.bench.arrivals import LoadSpec, sweep
from trtbuild.bench.metrics import SLO
from trtbuild.bench.results import BenchResult, RequestRecord, RunSummary, load_run
from trtbuild.bench.workload import WorkloadSpec


def run_offline_bench(*args, **kwargs):
    from trtbuild.bench.offline import run_offline_bench as run

    return run(*args, **kwargs)


def run_offline_sweep(*args, **kwargs):
    from trtbuild.bench.offline import run_offline_sweep as run

    return run(*args, **kwargs)


def run_online_bench(*args, **kwargs):
    from trtbuild.bench.online import run_online_bench as run

    return run(*args, **kwargs)


__all__ = ["LoadSpec", "sweep", "SLO", "BenchResult", "RequestRecord", "RunSummary", "load_run", "WorkloadSpec",
           "run_offline_bench", "run_offline_sweep", "run_online_bench"]
