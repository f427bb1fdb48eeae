"""Client worker processes for online runs (`trtbuild bench --url ... --client-workers N`), as AIPerf has.

One asyncio process timestamps every SSE event of every stream; at GPU rates (256 streams of a 10 ms
step: 25,600 events/s) its event loop falls behind and the chunk stamps are late by its lag (measured:
loop-lag p99 5.5-12.5 ms at 256 streams, past the 5 ms the client allows itself). N workers each run
their share of a load level on their own loop, with their own lag/CPU monitor, and send their records
back to the parent, which merges them into one run (the same BenchResult, the same JSON).

How a level is split: closed loop: worker w gets every N-th request (warm-up and measured) and
concurrency C // N (+1 for the first C % N workers), so together they hold C in flight; open loop: the
parent draws the whole arrival schedule (seeded, as with one process) and worker w sends every N-th
request at its scheduled time. Workers wait at a barrier after their warm-up, so the measured phase
starts together.

Clock: every stamp is time.monotonic_ns() minus an origin the parent takes before the level starts.
CLOCK_MONOTONIC is one system-wide clock on Linux (and macOS), so stamps from different processes are
directly comparable; perf_counter's reference point is undefined across processes by Python's
documentation (on Linux it is the same clock, with the same resolution).

Workers are spawned (not forked: the parent may hold threads and a used event loop), started once per
`trtbuild bench` invocation and reused for every level and trial.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace

from trtbuild.bench.arrivals import LoadSpec, schedule
from trtbuild.bench.results import RequestRecord
from trtbuild.bench.runner import run_client
from trtbuild.bench.workload import BenchRequest, WorkloadSpec
from trtbuild.errors import TrtbuildError

CLOCK = time.monotonic_ns  # system-wide on Linux: comparable between the client's processes
STREAMS_PER_WORKER = 128  # what one asyncio client keeps exact at GPU rates (see auto_workers)
MAX_WORKERS = 64
START_TIMEOUT_S = 60.0


def parse_workers(value) -> int | None:
    """--client-workers: 'auto' (None) or a whole number >= 1; anything else is a one-line error."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        raise TrtbuildError(f"--client-workers must be auto or a whole number from 1 to {MAX_WORKERS}, "
                            f"got {value!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise TrtbuildError(f"--client-workers must be auto or a whole number from 1 to {MAX_WORKERS}, got {n}")
    return n


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers(loads: list[LoadSpec]) -> int:
    """The default: one worker per STREAMS_PER_WORKER streams of the highest closed-loop concurrency,
    at most one per CPU this process may run on (more processes than cores only time-share a core and
    gain no precision). One asyncio client at 256 streams of a 10 ms step spent 55% of its core and its
    loop lag p99 reached 5.5-12.5 ms; at 128 streams it handles half the events. Below 128 streams one
    process is exact and starts faster. Open-loop runs: one, unless asked (their concurrency is unknown)."""
    peak = max((load.concurrency or 0) for load in loads if not load.open_loop) if any(
        not load.open_loop for load in loads) else 0
    return max(1, min(-(-peak // STREAMS_PER_WORKER), usable_cpus()))


@dataclass
class ClientConfig:
    """What a worker needs to send requests like the parent would (picklable)."""

    urls: list[str]
    model: str
    spec: WorkloadSpec
    extensions: dict
    prompt_format: str
    api_key: str | None
    timeout_s: float


def split(requests: list[BenchRequest], load: LoadSpec, n: int) -> list[tuple[LoadSpec, list[BenchRequest], list | None]]:
    """(load, requests, open-loop offsets) for each of n workers; a worker may get nothing."""
    warm = [r for r in requests if r.warmup]
    measured = [r for r in requests if not r.warmup]
    offsets = [float(x) for x in schedule(len(measured), load)] if load.open_loop else None
    shares = []
    for w in range(n):
        if load.open_loop:
            share_load = load
        else:
            c = load.concurrency // n + (1 if w < load.concurrency % n else 0)
            share_load = LoadSpec(concurrency=c, duration_s=load.duration_s, seed=load.seed)
        mine = measured[w::n] if (load.open_loop or share_load.concurrency) else []
        mine_warm = warm[w::n] if mine else []
        shares.append((share_load, mine_warm + mine, offsets[w::n] if offsets is not None else None))
    return shares


def _records_out(records: list[RequestRecord]) -> list[dict]:
    return [r.to_dict() for r in records]


async def _run_share(config: ClientConfig, load: LoadSpec, requests: list[BenchRequest], offsets, t0_ns: int,
                     barrier) -> dict:
    from trtbuild.bench.http import StreamClient
    from trtbuild.bench.online import PATHS, _headers, make_issue, settle_texts
    from trtbuild.bench.runner import run_load

    loop = asyncio.get_running_loop()

    async def between():  # every worker has finished its warm-up: the measured phase starts together
        await loop.run_in_executor(None, barrier.wait, config.timeout_s + START_TIMEOUT_S)

    texts: dict[int, str] = {}
    client = StreamClient(_headers(config.api_key), config.timeout_s)
    try:
        issue = make_issue(client, config.urls, PATHS[config.spec.endpoint], config.model, config.spec,
                           config.extensions, config.prompt_format, texts, None, CLOCK)
        records, monitor = await run_load(requests, load, issue, clock=CLOCK, t0_ns=t0_ns, offsets=offsets,
                                          between=between)
    finally:
        client.close()
    texts = settle_texts(texts)  # before the records go out: it fills them
    return {"records": _records_out(records), "texts": texts, "pid": os.getpid(),
            "monitor": {"lags_ms": monitor.lags_ms, "cpu_thread": monitor.cpu_thread,
                        "cpu_process": monitor.cpu_process}}


def _worker_main(conn, barrier, config: ClientConfig) -> None:
    """A worker's life: run each share it is sent, answer ("ok", result) or ("error", message); None ends it."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        load, requests, offsets, t0_ns = job
        try:
            conn.send(("ok", run_client(_run_share(config, load, requests, offsets, t0_ns, barrier))))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
            barrier.abort()  # the others must not wait for this one
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))
            if isinstance(exc, KeyboardInterrupt):
                return


class WorkerPool:
    """n spawned client processes, reused across the levels and trials of one invocation."""

    def __init__(self, n: int, config: ClientConfig):
        ctx = multiprocessing.get_context("spawn")
        self.n = n
        self.barrier = ctx.Barrier(n)
        self.conns, self.procs = [], []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, self.barrier, config), daemon=True,
                               name=f"trtbuild-bench-client-{i + 1}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def run(self, requests: list[BenchRequest], load: LoadSpec, on_done=None):
        """Run one level across the workers; returns [(records, monitor, texts)] of the workers that had
        requests, stamps relative to one origin on CLOCK."""
        shares = split(requests, load, self.n)
        self.barrier.reset()
        t0 = CLOCK()
        for conn, (share_load, share, offsets) in zip(self.conns, shares):
            conn.send((share_load, share, offsets, t0))
        out, errors = [], []
        for i, (conn, proc, (_, share, _)) in enumerate(zip(self.conns, self.procs, shares)):
            while not conn.poll(0.5):  # each request has its own timeout in the worker; a dead worker ends it
                if not proc.is_alive():
                    raise TrtbuildError(f"client worker {i + 1} died (exit code {proc.exitcode}); rerun with "
                                        "--client-workers 1 to see the error in this process")
            status, result = conn.recv()
            if status != "ok":
                errors.append(f"client worker {i + 1}: {result}")
                continue
            if on_done is not None:
                on_done(len(share))
            if share:
                records = [RequestRecord.from_dict(d) for d in result["records"]]
                out.append((records, SimpleNamespace(**result["monitor"]), result["texts"]))
        if errors:
            raise TrtbuildError(errors[0] if len(errors) == 1 else "; ".join(errors))
        return out

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def merge(parts) -> tuple[list[RequestRecord], dict[int, str], list]:
    """Workers' (records, monitor, texts) -> one record list (warm-up first, then by scheduled time), all
    texts, and [(records, monitor)] per worker for the per-worker checks."""
    records = [r for recs, _, _ in parts for r in recs]
    records.sort(key=lambda r: (not r.warmup, r.scheduled_ns, r.index))
    texts: dict[int, str] = {}
    for _, _, t in parts:
        texts.update({int(k): v for k, v in t.items()})
    return records, texts, [(recs, mon) for recs, mon, _ in parts]

