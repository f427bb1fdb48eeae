"""Repeated trials of a load level, merged into one run with intervals (`trtbuild bench --trials N`).

Each trial is a full run of the level (warm-up, measured requests, its own window) summarized on its
own; the merged summary keeps every trial (summary.trials), and reports:
- throughput and goodput: the mean over trials; latency statistics: pooled over all trials' requests
  (more samples for the percentiles);
- summary.intervals: mean, 95% Student-t interval and coefficient of variation over the per-trial values
  of TRIAL_METRICS (trtbuild/bench/stats.py states the method); with one trial, latency percentiles get
  a bootstrap interval over requests instead and throughput none;
- summary.sample_check: percentiles with too few samples, windows too short (stats.sample_check).
The order of trials interleaves levels (and engines, in trtbuild run) so that drift hits all alike:
trial t runs the levels rotated by t (interleave()).
"""

from __future__ import annotations

import dataclasses

from trtbuild.bench import metrics, stats
from trtbuild.bench.results import BenchResult, RunSummary, new_run_id
from trtbuild.bench.runner import check_tokens
from trtbuild.bench.workload import WorkloadSpec

# metric key -> (path in a summary dict, higher is better, label)
TRIAL_METRICS = {
    "requests_per_s": (("throughput", "requests_per_s"), True, "requests/s"),
    "output_tokens_per_s": (("throughput", "output_tokens_per_s"), True, "output tok/s"),
    "goodput_rps": (("slo", "goodput_rps"), True, "goodput req/s"),
    "ttft_p50": (("latency_ms", "ttft", "p50"), False, "TTFT p50 ms"),
    "ttft_p99": (("latency_ms", "ttft", "p99"), False, "TTFT p99 ms"),
    "tpot_p50": (("latency_ms", "tpot", "p50"), False, "TPOT p50 ms"),
    "itl_token_p50": (("latency_ms", "itl_token", "p50"), False, "ITL/token p50 ms"),
    "e2e_p50": (("latency_ms", "e2e", "p50"), False, "E2E p50 ms"),
}
# The percentiles the report's tables show, checked for enough samples: p50s per trial, p99 pooled.
REPORTED_PER_TRIAL = {"ttft": [50], "tpot": [50], "itl_token": [50], "e2e": [50]}
REPORTED_POOLED = {"ttft": [99]}


def get(data: dict, path: tuple):
    for key in path:
        data = (data or {}).get(key)
    return data if isinstance(data, (int, float)) and not isinstance(data, bool) else None


def interleave(items: list, trial: int) -> list:
    """items rotated by `trial` (trial 0: as given), so every item takes every position over the trials."""
    if not items:
        return []
    k = trial % len(items)
    return items[k:] + items[:k]


def trial_metrics(summary_dict: dict) -> dict:
    return {key: get(summary_dict, path) for key, (path, _, _) in TRIAL_METRICS.items()}


def merge_trials(trials: list[BenchResult], slo: metrics.SLO | None = None) -> BenchResult:
    """Trials of one engine at one load level (each summarized alone) -> one BenchResult holding them all."""
    first = trials[0].summary
    records = []
    for t, trial in enumerate(trials):
        for rec in trial.records:
            rec.trial = t
            records.append(rec)
    per_trial = []
    for t, trial in enumerate(trials):
        s = trial.summary
        per_trial.append({"trial": t, "run_id": s.run_id, "created_at": s.created_at, "duration_s": s.duration_s,
                          "counts": s.counts, "metrics": trial_metrics(s.to_dict()), "validity": s.validity,
                          "client": {k: s.client.get(k) for k in ("cpu_thread", "reasons") if k in s.client},
                          "environment": s.environment})
    pooled = metrics.compute(records, slo)  # latency statistics over every trial's requests
    throughput = {}
    for key in first.throughput:
        values = [trial.summary.throughput.get(key) for trial in trials]
        throughput[key] = (sum(values) / len(values)) if all(isinstance(v, (int, float)) for v in values) else None
    slo_report = pooled["slo"]
    if slo_report is not None:
        goodputs = [(trial.summary.slo or {}).get("goodput_rps") for trial in trials]
        slo_report["goodput_rps"] = sum(goodputs) / len(goodputs) if None not in goodputs else None
    reasons = [f"trial {t + 1}: {why}" for t, trial in enumerate(trials) for why in trial.summary.validity["reasons"]]
    if len(trials) == 1:
        reasons = list(first.validity["reasons"])
    counts = dict(pooled["counts"])
    summary = dataclasses.replace(
        first, run_id=new_run_id(first.load), counts=counts,
        token_counts=check_tokens(records, WorkloadSpec.from_dict(first.workload)),
        duration_s=sum(t.summary.duration_s for t in trials) / len(trials), throughput=throughput,
        latency_ms=pooled["latency_ms"], slo=slo_report, validity={"valid": not reasons, "reasons": reasons},
        trials=per_trial, environment=_environment(trials))
    summary.intervals = {k: v.to_dict() for k, v in intervals(summary, records).items()}
    summary.sample_check = check_samples(summary)
    return BenchResult(summary, records)


def _environment(trials: list[BenchResult]) -> dict | None:
    envs = [t.summary.environment for t in trials if t.summary.environment]
    if not envs:
        return None
    busy = [i + 1 for i, t in enumerate(trials) if (t.summary.environment or {}).get("busy")]
    return {"first": envs[0], "last": envs[-1], "busy_trials": busy,
            "max_other_cpu_cores": max(e.get("other_cpu_cores") or 0 for e in envs), "busy": bool(busy)}


def intervals(summary: RunSummary, records=None) -> dict[str, stats.Interval]:
    """Interval per TRIAL_METRICS key: Student-t over trials; one trial: bootstrap over requests for the
    latency percentiles (records needed), none for throughput."""
    if len(summary.trials) >= 2:
        return {key: stats.mean_interval([t["metrics"].get(key) for t in summary.trials]) for key in TRIAL_METRICS}
    data = summary.to_dict()
    out = {key: stats.Interval(get(data, path), n=1, method="none") for key, (path, _, _) in TRIAL_METRICS.items()}
    if records:
        per = [metrics.request_metrics(r) for r in records if not r.warmup and r.error_type is None]
        for key, (path, _, _) in TRIAL_METRICS.items():
            if path[0] != "latency_ms":
                continue
            metric, q = path[1], float(path[2][1:])
            if metric.startswith("itl"):
                values = [v * 1e3 for m in per for v in (m[metric] or [])]
            else:
                values = [m[metric] * 1e3 for m in per if m[metric] is not None]
            if len(values) >= 2:
                out[key] = stats.bootstrap_interval(values, q, seed=summary.seed)
    return out


def result_intervals(result: BenchResult) -> dict[str, stats.Interval]:
    """The stored intervals, or (for a summary written before trials existed) computed from the records."""
    if result.summary.intervals:
        return {k: stats.Interval.from_dict(v) for k, v in result.summary.intervals.items()}
    return intervals(result.summary, result.records)


def check_samples(summary: RunSummary) -> dict:
    """stats.sample_check on the per-trial sample counts (p50s, the window) and the pooled ones (p99)."""
    per_trial_n = {}
    for metric in REPORTED_PER_TRIAL:
        pooled_n = (summary.latency_ms.get(metric) or {}).get("n") or 0
        per_trial_n[metric] = {"n": pooled_n // summary.num_trials, "p50": (summary.latency_ms.get(metric) or {}).get("p50")}
    durations = [t.get("duration_s") for t in summary.trials] or [summary.duration_s]
    a = stats.sample_check(per_trial_n, min(d for d in durations if d is not None) if any(durations) else None,
                           REPORTED_PER_TRIAL)
    b = stats.sample_check({m: summary.latency_ms.get(m) or {} for m in REPORTED_POOLED}, None, REPORTED_POOLED)
    flags = [f + (" per trial" if summary.num_trials > 1 and "samples" in f else "") for f in a["flags"]]
    flags += [f + (" pooled over trials" if summary.num_trials > 1 else "") for f in b["flags"]]
    return {"ok": not flags, "flags": flags}


def trial_goodputs(result: BenchResult, slo: metrics.SLO | None) -> list[float]:
    """Goodput of each trial under `slo` (recomputed from its records; without an SLO: requests/s)."""
    if slo is None or not slo.targets():
        if result.summary.trials:
            return [t["metrics"].get("requests_per_s") or 0.0 for t in result.summary.trials]
        return [result.summary.throughput.get("requests_per_s") or 0.0]
    by_trial: dict[int, list] = {}
    for rec in result.records:
        by_trial.setdefault(rec.trial, []).append(rec)
    return [(metrics.compute(recs, slo)["slo"] or {}).get("goodput_rps") or 0.0 for _, recs in sorted(by_trial.items())]
