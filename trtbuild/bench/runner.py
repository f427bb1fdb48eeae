"""The load generator shared by offline and online runs, its self-checks, and the run summary.

One asyncio loop sends every request (an engine stream or an HTTP stream: `issue` fills the record),
so both modes schedule, time and judge themselves the same way; online, that loop may be one of several
client worker processes, each running its share (trtbuild/bench/workers.py) and judged on its own. The client is judged a bottleneck,
and the run marked invalid, when (docs/benchmarks.md explains the thresholds):
  - its thread used more than CLIENT_CPU_MAX of one core (time.thread_time over wall time);
  - open loop: p99 send lag (sent - scheduled) > max(LAG_FLOOR_MS, LAG_FRACTION x mean gap 1/rate):
    the rate asked for was not delivered;
  - online: p99 lag of a 10 ms event-loop ticker > max(LAG_FLOOR_MS, LAG_FRACTION x min(TTFT p50,
    chunk-ITL p50)): chunk timestamps were late by a sizeable part of what they measure. Offline token
    times are the engine's own stamps, so loop lag is reported there but cannot distort them.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Awaitable, Callable, TypeVar

import numpy as np

from trtbuild import __version__
from trtbuild.bench import metrics
from trtbuild.bench.arrivals import LoadSpec, schedule
from trtbuild.bench.results import BenchResult, RequestRecord, RunSummary, new_run_id, now_iso, system_info, versions
from trtbuild.bench.workload import BenchRequest, WorkloadSpec
from trtbuild.heap import frozen_heap

LAG_FLOOR_MS = 5.0
LAG_FRACTION = 0.10
CLIENT_CPU_MAX = 0.9
TICK_S = 0.01

T = TypeVar("T")

# issue(request, record, t0_ns): send one request, fill the record (times relative to t0_ns).
Issue = Callable[[BenchRequest, RequestRecord, int], Awaitable[None]]


class ClientMonitor:
    """Event-loop lag from a ticker task, and the CPU the loop's thread and process used."""

    def __init__(self):
        self.lags_ms: list[float] = []
        self._task = None

    async def __aenter__(self):
        self._wall, self._thread, self._proc = time.perf_counter(), time.thread_time(), time.process_time()
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        wall = time.perf_counter() - self._wall
        self.cpu_thread = (time.thread_time() - self._thread) / wall if wall > 0 else 0.0
        self.cpu_process = (time.process_time() - self._proc) / wall if wall > 0 else 0.0

    async def _tick(self):
        while True:
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            self.lags_ms.append(max(time.perf_counter() - due, 0.0) * 1e3)


async def drive(requests: list[BenchRequest], load: LoadSpec, issue: Issue, t0_ns: int,
                clock: Callable[[], int] = time.perf_counter_ns, offsets: list[float] | None = None,
                between: Callable[[], Awaitable[None]] | None = None) -> list[RequestRecord]:
    """Send warm-up requests (concurrently, then wait), then the measured ones under `load`.

    clock: the ns clock every stamp is taken with (t0_ns on the same clock); offsets: the open loop's send
    times (s from its start), one per measured request, when a caller split a schedule between workers
    (trtbuild/bench/workers.py); between: awaited after the warm-up (the workers' barrier)."""
    def record(req: BenchRequest) -> RequestRecord:
        return RequestRecord(index=req.index, warmup=req.warmup, input_tokens=req.input_len,
                             requested_output_tokens=req.output_len)

    def now() -> int:
        return clock() - t0_ns

    def send(req, rec):
        return issue(req, rec, t0_ns)

    warm = [r for r in requests if r.warmup]
    measured = [r for r in requests if not r.warmup]
    records: list[RequestRecord] = []
    if warm:
        width = load.concurrency if not load.open_loop else max(1, min(len(warm), 8))
        records += await _closed_loop(warm, width, send, record, now, None)
    if between is not None:
        await between()
    if load.open_loop:
        records += await _open_loop(measured, load, send, record, now, offsets)
    else:
        records += await _closed_loop(measured, load.concurrency, send, record, now, load.duration_s)
    return records


async def _closed_loop(reqs, width, issue, record, now, duration_s) -> list[RequestRecord]:
    queue = iter(reqs)
    out: list[RequestRecord] = []
    start = now()

    async def worker():
        for req in queue:  # a shared iterator: each worker takes the next request when its slot frees
            if duration_s is not None and now() - start > duration_s * 1e9:
                return
            rec = record(req)
            rec.scheduled_ns = now()
            out.append(rec)
            await issue(req, rec)

    await asyncio.gather(*(worker() for _ in range(min(width, len(reqs)))))
    return out


async def _open_loop(reqs, load, issue, record, now, offsets=None) -> list[RequestRecord]:
    at = schedule(len(reqs), load) if offsets is None else offsets
    start = now()
    tasks, out = [], []
    for req, offset in zip(reqs, at):
        if load.duration_s is not None and offset > load.duration_s:
            break
        due = start + round(offset * 1e9)
        while (delay := (due - now()) / 1e9) > 0:  # a loop: uvloop's timers count whole ms and may fire early
            await asyncio.sleep(delay)
        rec = record(req)
        rec.scheduled_ns = due
        out.append(rec)
        tasks.append(asyncio.create_task(issue(req, rec)))
    await asyncio.gather(*tasks)
    return out


def run_client(main: Awaitable[T]) -> T:
    """asyncio.run on uvloop where it is installed (the server runs on it too), the stdlib loop otherwise. At
    256 streams of a 10 ms step the client used 51-54% of its core on uvloop against 65-66% on the stdlib
    loop (loop-lag p99 5-13 ms against 20-22 ms; bench/bench_serving_path.py, 2 runs each)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def run_load(requests, load: LoadSpec, issue: Issue, clock: Callable[[], int] = time.perf_counter_ns,
                   t0_ns: int | None = None, offsets: list[float] | None = None,
                   between: Callable[[], Awaitable[None]] | None = None) -> tuple[list[RequestRecord], ClientMonitor]:
    """Drive the load under a ClientMonitor; returns the records and the monitor. t0_ns (on `clock`):
    the origin of every stamp, default now (workers get their parent's, so their records merge)."""
    t0 = clock() if t0_ns is None else t0_ns
    with frozen_heap():
        async with ClientMonitor() as monitor:
            records = await drive(requests, load, issue, t0, clock, offsets, between)
    return records, monitor


class PooledMonitor:
    """The client processes of a multi-worker run as one monitor: every worker's loop-lag samples, the
    busiest loop's thread CPU, all workers' process CPU together (cores)."""

    def __init__(self, monitors: list):
        self.lags_ms = [lag for m in monitors for lag in m.lags_ms]
        self.cpu_thread = max((m.cpu_thread for m in monitors), default=0.0)
        self.cpu_process = sum(m.cpu_process for m in monitors)


def client_health(records: list[RequestRecord], load: LoadSpec, monitor: ClientMonitor, mode: str,
                  latency_ms: dict, workers: list[tuple[list[RequestRecord], ClientMonitor]] | None = None) -> dict:
    """The client's verdict on itself. With worker processes (workers: each one's records and monitor),
    every check applies to each worker on its own (its loop, its CPU, its sends) and any worker's failure
    invalidates the run; the top-level figures are pooled over the workers."""
    if workers is not None and len(workers) > 1:
        per = [client_health(recs, load, mon, mode, latency_ms) for recs, mon in workers]
        pooled = client_health(records, load, monitor, mode, latency_ms)
        reasons = [f"client worker {i + 1}/{len(per)}: {why}" for i, h in enumerate(per) for why in h["reasons"]]
        pooled["workers"] = [{"requests": len(recs), "cpu_thread": h["cpu_thread"], "cpu_process": h["cpu_process"],
                              "loop_lag_ms": h["loop_lag_ms"], "send_lag_ms": h["send_lag_ms"], "reasons": h["reasons"]}
                             for (recs, _), h in zip(workers, per)]
        pooled.update(reasons=reasons, bottleneck=bool(reasons))
        return pooled
    send_lag = [max(r.sent_ns - r.scheduled_ns, 0) / 1e6 for r in records if not r.warmup and r.sent_ns]
    lag, send = metrics.stats(monitor.lags_ms), metrics.stats(send_lag)
    reasons, limits = [], {"cpu_thread_max": CLIENT_CPU_MAX}
    if monitor.cpu_thread > CLIENT_CPU_MAX:
        reasons.append(f"client thread CPU {monitor.cpu_thread:.0%} of a core > {CLIENT_CPU_MAX:.0%}")
    if load.open_loop:
        limits["send_lag_p99_ms"] = max(LAG_FLOOR_MS, LAG_FRACTION * 1e3 / load.request_rate)
        if send["p99"] is not None and send["p99"] > limits["send_lag_p99_ms"]:
            reasons.append(f"send lag p99 {send['p99']:.1f} ms > {limits['send_lag_p99_ms']:.1f} ms: "
                           "the requested rate was not delivered")
    if mode == "online":
        measured = [(latency_ms.get(m) or {}).get("p50") for m in ("ttft", "itl_chunk")]
        measured = [v for v in measured if v]
        limits["loop_lag_p99_ms"] = max(LAG_FLOOR_MS, LAG_FRACTION * min(measured, default=0.0))
        if lag["p99"] is not None and lag["p99"] > limits["loop_lag_p99_ms"]:
            busy = ("the client itself was busy" if monitor.cpu_thread > CLIENT_CPU_MAX / 2 else
                    f"the client used {monitor.cpu_thread:.0%} of a core: other processes starved it")
            reasons.append(f"event-loop lag p99 {lag['p99']:.1f} ms > {limits['loop_lag_p99_ms']:.1f} ms, so chunk "
                           f"timestamps may be late ({busy})")
    return {"send_lag_ms": send, "loop_lag_ms": lag, "cpu_thread": monitor.cpu_thread,
            "cpu_process": monitor.cpu_process, "cpu_count": os.cpu_count(), "thresholds": limits,
            "bottleneck": bool(reasons), "reasons": reasons}


def check_tokens(records: list[RequestRecord], spec: WorkloadSpec) -> dict:
    """Choose each request's output count (engine > usage > client), flag disagreements and wrong lengths."""
    sources: dict[str, int] = {}
    compared = differs = prompts_compared = 0
    prompt_pairs: dict[tuple[int, int], int] = {}  # (client, server) prompt counts that differ -> requests
    abs_diff = []
    for r in records:
        counts = {k: v for k, v in r.token_counts.items() if v is not None}
        for source in ("engine", "usage", "client"):
            if source in counts:
                r.output_tokens, r.token_source = counts[source], source
                break
        if r.error_type is not None or r.warmup:  # warm-up requests stay out of every statistic
            continue
        sources[r.token_source] = sources.get(r.token_source, 0) + 1
        if "engine" in counts and "usage" in counts and counts["engine"] != counts["usage"]:
            r.flags.append("token_count_mismatch")
        if "client" in counts and r.token_source != "client":
            compared += 1
            differs += counts["client"] != r.output_tokens
            abs_diff.append(abs(counts["client"] - r.output_tokens))
        if r.prompt_tokens_usage is not None:
            prompts_compared += 1
            if r.prompt_tokens_usage != r.input_tokens:
                r.flags.append("input_len_mismatch")
                pair = (r.input_tokens, r.prompt_tokens_usage)
                prompt_pairs[pair] = prompt_pairs.get(pair, 0) + 1
        if spec.ignore_eos and r.output_tokens != r.requested_output_tokens:
            r.flags.append("length_mismatch")
    return {"sources": sources, "authority": ["engine", "usage", "client"],
            "client_retokenization": {"compared": compared, "differs": differs,
                                      "mean_abs_diff": float(np.mean(abs_diff)) if abs_diff else None,
                                      "note": "decode/re-encode is not an identity: a difference here is "
                                              "expected and does not fail the run"},
            "prompt": {"compared": prompts_compared, "differs": sum(prompt_pairs.values()),
                       "note": _prompt_note(spec, prompt_pairs)}}


def _prompt_note(spec: WorkloadSpec, pairs: dict[tuple[int, int], int]) -> str | None:
    """What input_len_mismatch means, in words: the server counted the prompt differently from the client."""
    if not pairs:
        return None
    shown = ", ".join(f"{server} for {client}" for client, server in sorted(pairs)[:3])
    if spec.endpoint == "chat":
        why = ("the client counts the prompt under the Mistral v3 chat template (BOS included), so the server "
               "applies another chat template or tokenizer")
    else:
        why = "the server's tokenizer encodes the prompt to another length than the Mistral v3 tokenizer"
    return (f"input_len_mismatch on {sum(pairs.values())} request(s): the server's usage.prompt_tokens was "
            f"{shown}{' ...' if len(pairs) > 3 else ''} tokens counted by the client; {why}. Input tokens and "
            "input tok/s use the client's count")


def summarize(mode: str, spec: WorkloadSpec, load: LoadSpec, target: dict, records: list[RequestRecord],
              monitor: ClientMonitor, slo: metrics.SLO | None, num_gpus: int | None = None,
              workers: list[tuple[list[RequestRecord], ClientMonitor]] | None = None) -> BenchResult:
    tokens = check_tokens(records, spec)
    computed = metrics.compute(records, slo, num_gpus)
    health = client_health(records, load, monitor, mode, computed["latency_ms"], workers)
    reasons = list(health["reasons"])
    flagged = computed["counts"]["flagged"]
    if flagged.get("length_mismatch"):
        reasons.append(f"{flagged['length_mismatch']} request(s) returned another output length than asked "
                       "with ignore_eos (the server ignored ignore_eos/min_tokens?)")
    if flagged.get("token_count_mismatch"):
        reasons.append(f"{flagged['token_count_mismatch']} request(s): engine and server token counts disagree")
    if computed["counts"]["succeeded"] == 0:
        reasons.append("no request succeeded")
    summary = RunSummary(
        run_id=new_run_id(load.to_dict()), mode=mode, tool_version=__version__, created_at=now_iso(),
        seed=spec.seed, workload=spec.to_dict(), load=load.to_dict(), target=target, system=system_info(),
        versions=versions(), counts=computed["counts"], duration_s=computed["duration_s"],
        throughput=computed["throughput"], latency_ms=computed["latency_ms"], token_counts=tokens,
        slo=computed["slo"], client=health, validity={"valid": not reasons, "reasons": reasons},
        unavailable=computed.get("unavailable", []))
    return BenchResult(summary, records)
