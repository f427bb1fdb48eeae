"""Metric definitions, written once for offline and online runs (docs/benchmarks.md explains each).

All times are ns stamps relative to the run's start (perf_counter offline, monotonic_ns online). A request's timeline is:
sent -> chunk 1 (first content) -> ... -> chunk k (last content) -> stream end (usage chunk, [DONE]).

    TTFT        first content-bearing chunk - sent
    E2E         last content-bearing chunk - sent (never the trailing usage chunk)
    TPOT        (E2E - TTFT) / (output_tokens - 1); undefined for one output token (excluded)
    TTST        arrival of the chunk holding output token 2 - sent (AIPerf measures it from token 1)
    itl_chunk   every gap between consecutive content chunks (what vLLM reports as ITL)
    itl_token   each gap divided evenly over the tokens its chunk delivered; extra tokens of the first
                chunk count as gaps of 0, so a request's itl_token values sum to E2E - TTFT and average
                to its TPOT exactly
    queue       server-side wait before scheduling (offline: RequestTimings; online: unknown)

Failed requests never enter latency statistics; they count against SLO attainment.
Percentiles use linear interpolation between closest ranks (numpy's default; trtllm-bench uses
nearest rank, so its p99 on few requests can differ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trtbuild.errors import TrtbuildError

PERCENTILES = (50, 90, 95, 99, 99.9)
LATENCY_METRICS = ("ttft", "tpot", "itl_chunk", "itl_token", "e2e", "ttst", "queue")
SLO_METRICS = ("ttft", "tpot", "e2e")


def stats(values) -> dict:
    """mean, std (population), min, p50, p90, p95, p99, p99.9, max and n; None everywhere when empty."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    keys = ["mean", "std", "min"] + [_pname(p) for p in PERCENTILES] + ["max"]
    if arr.size == 0:
        return {**{k: None for k in keys}, "n": 0}
    pct = np.percentile(arr, PERCENTILES, method="linear")
    out = {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min())}
    out.update({_pname(p): float(v) for p, v in zip(PERCENTILES, pct)})
    out.update({"max": float(arr.max()), "n": int(arr.size)})
    return out


def _pname(p: float) -> str:
    return f"p{p:g}"


@dataclass
class SLO:
    """Latency targets in milliseconds; None = no target on that metric."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> SLO | None:
        """'ttft=200,tpot=50,e2e=2000' (ms; any subset) -> SLO."""
        if not text:
            return None
        slo = cls()
        for part in text.split(","):
            name, sep, value = part.strip().partition("=")
            name = name.strip().lower()
            if not sep or name not in SLO_METRICS:
                raise TrtbuildError(f"--slo {text!r}: expected ttft=MS,tpot=MS,e2e=MS (any of them), got {part!r}")
            try:
                ms = float(value)
            except ValueError:
                raise TrtbuildError(f"--slo {name}={value!r} is not a number of milliseconds") from None
            if not ms > 0:
                raise TrtbuildError(f"--slo {name} must be > 0 ms, got {value}")
            setattr(slo, f"{name}_ms", ms)
        return slo

    def targets(self) -> dict[str, float]:
        return {m: getattr(self, f"{m}_ms") for m in SLO_METRICS if getattr(self, f"{m}_ms") is not None}

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.targets().items())

    def to_dict(self) -> dict:
        return {f"{m}_ms": getattr(self, f"{m}_ms") for m in SLO_METRICS}

    @classmethod
    def from_dict(cls, data: dict | None) -> SLO | None:
        return cls(**{k: data.get(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms")}) if data else None


def chunk_token_counts(record) -> list[int] | None:
    """Tokens delivered by each content chunk: as recorded, or 1 each when the chunk count equals the
    output count (one token per SSE event); None when that cannot be known."""
    if record.chunk_tokens is not None:
        return list(record.chunk_tokens)
    if record.output_tokens is not None and record.output_tokens == len(record.chunk_ns):
        return [1] * len(record.chunk_ns)
    return None


def request_metrics(record) -> dict:
    """Per-request latencies in seconds (None where undefined) for one successful request."""
    chunks = record.chunk_ns
    out = {"ttft": None, "e2e": None, "tpot": None, "ttst": None, "itl_chunk": [], "itl_token": None,
           "queue": record.queue_ns / 1e9 if record.queue_ns is not None else None}
    if not chunks:
        return out
    sent = record.sent_ns
    out["ttft"] = (chunks[0] - sent) / 1e9
    out["e2e"] = (chunks[-1] - sent) / 1e9
    n = record.output_tokens
    if n is not None and n >= 2:
        out["tpot"] = (out["e2e"] - out["ttft"]) / (n - 1)
    gaps = [(b - a) / 1e9 for a, b in zip(chunks, chunks[1:])]
    out["itl_chunk"] = gaps
    per_chunk = chunk_token_counts(record)
    if per_chunk is not None and len(per_chunk) == len(chunks):
        itl = [0.0] * max(per_chunk[0] - 1, 0)
        for gap, k in zip(gaps, per_chunk[1:]):
            itl.extend([gap / k] * k if k > 0 else [])
        out["itl_token"] = itl
        cumulative, second = 0, None
        for t, k in zip(chunks, per_chunk):
            cumulative += k
            if cumulative >= 2:
                second = t
                break
        out["ttst"] = (second - sent) / 1e9 if second is not None else None
    elif len(chunks) >= 2 and n is not None and n >= 2:
        out["ttst"] = None  # unknown split: the second chunk need not hold the second token
    return out


def token_times(record) -> list[tuple[int, int]]:
    """(arrival ns, tokens) per content chunk; tokens spread evenly over chunks when the split is unknown."""
    per_chunk = chunk_token_counts(record)
    if per_chunk is None:
        n, k = record.output_tokens or 0, max(len(record.chunk_ns), 1)
        per_chunk = [n // k + (1 if i < n % k else 0) for i in range(len(record.chunk_ns))]
    return list(zip(record.chunk_ns, per_chunk))


def measure_window(records) -> tuple[int, int]:
    """The measured window: first measured send to the last measured request's last event."""
    start = min(r.sent_ns for r in records)
    end = max(max([r.end_ns, *r.chunk_ns[-1:]]) for r in records)
    return start, max(end, start + 1)


def peak_output_tps(records, start_ns: int, end_ns: int) -> float | None:
    """Most output tokens delivered in any full 1 s bucket of the window (the whole window if < 1 s)."""
    events = [te for r in records for te in token_times(r)]
    if not events:
        return None
    span = (end_ns - start_ns) / 1e9
    if span < 1:
        return sum(k for _, k in events) / span
    buckets = np.zeros(int(span), dtype=np.int64)  # full buckets only: a partial last one would lie
    for t, k in events:
        i = int((t - start_ns) // 1_000_000_000)
        if 0 <= i < len(buckets):
            buckets[i] += k
    return float(buckets.max())


def slo_report(per_request: list[dict | None], slo: SLO | None, duration_s: float) -> dict | None:
    """Attainment per metric and goodput. per_request holds request_metrics() or None for a failure.

    Failed requests count as misses; a TPOT target is met by a one-token request (TPOT undefined)."""
    if slo is None or not slo.targets():
        return None
    total = len(per_request)
    met_all = [m is not None for m in per_request]
    attainment = {}
    for metric, target_ms in slo.targets().items():
        met = 0
        for i, m in enumerate(per_request):
            ok = _meets(m, metric, target_ms)
            met += ok
            met_all[i] = met_all[i] and ok
        attainment[metric] = met / total if total else None
    good = sum(met_all)
    return {"slo": slo.to_dict(), "attainment": attainment, "good_requests": good,
            "all_attainment": good / total if total else None,
            "goodput_rps": good / duration_s if duration_s > 0 else None}


def _meets(m: dict | None, metric: str, target_ms: float) -> bool:
    if m is None:  # failed request
        return False
    if m[metric] is None:  # only TPOT may be undefined (a single output token): nothing to miss
        return metric == "tpot"
    return m[metric] * 1e3 <= target_ms


def compute(records, slo: SLO | None = None, num_gpus: int | None = None) -> dict:
    """Counts, throughput, latency statistics (ms) and SLO attainment over the measured requests."""
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.error_type is None]
    failures: dict[str, int] = {}
    for r in measured:
        if r.error_type is not None:
            failures[r.error_type] = failures.get(r.error_type, 0) + 1
    counts = {"requests": len(measured), "succeeded": len(ok), "failed": len(measured) - len(ok),
              "failures_by_type": failures, "warmup": len(records) - len(measured),
              "flagged": {flag: sum(flag in r.flags for r in measured)
                          for flag in sorted({f for r in measured for f in r.flags})}}
    if not measured:
        return {"counts": counts, "duration_s": 0.0, "throughput": {}, "latency_ms": {}, "slo": None}
    start, end = measure_window(measured)
    duration = (end - start) / 1e9
    per_ok = [request_metrics(r) for r in ok]
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    in_tokens = sum(r.input_tokens for r in ok)
    per_user = [(r.output_tokens or 0) / m["e2e"] for r, m in zip(ok, per_ok) if m["e2e"]]
    throughput = {
        "requests_per_s": len(ok) / duration,
        "output_tokens_per_s": out_tokens / duration,
        "input_tokens_per_s": in_tokens / duration,
        "total_tokens_per_s": (in_tokens + out_tokens) / duration,
        "output_tokens_per_s_per_user": float(np.mean(per_user)) if per_user else None,
        "output_tokens_per_s_per_gpu": out_tokens / duration / num_gpus if num_gpus else None,
        "peak_output_tokens_per_s": peak_output_tps(ok, start, end),
        "output_tokens": out_tokens, "input_tokens": in_tokens,
    }
    latency = {}
    for metric in LATENCY_METRICS:
        if metric.startswith("itl"):
            values = [v for m in per_ok for v in (m[metric] or [])]
        else:
            values = [m[metric] for m in per_ok]
        latency[metric] = stats([v * 1e3 for v in values if v is not None])
    latency["per_user_output_tokens_per_s"] = stats(per_user)  # not ms: tokens/s per request
    per_all = []
    it = iter(per_ok)
    for r in measured:
        per_all.append(next(it) if r.error_type is None else None)
    return {"counts": counts, "duration_s": duration, "throughput": throughput, "latency_ms": latency,
            "unavailable": [m for m in LATENCY_METRICS if latency[m]["n"] == 0],
            "slo": slo_report(per_all, slo, duration)}


def itl_by_position(records, max_positions: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and p90 of itl_token (ms) at each output-token position (2..N) over successful requests."""
    columns: dict[int, list[float]] = {}
    for r in records:
        if r.warmup or r.error_type is not None:
            continue
        itl = request_metrics(r)["itl_token"] or []
        for pos, v in enumerate(itl[:max_positions], start=2):
            columns.setdefault(pos, []).append(v * 1e3)
    pos = np.array(sorted(columns))
    if pos.size == 0:
        return pos, np.array([]), np.array([])
    mean = np.array([np.mean(columns[p]) for p in pos])
    p90 = np.array([np.percentile(columns[p], 90) for p in pos])
    return pos, mean, p90


def is_finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)
