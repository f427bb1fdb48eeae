"""The widest work of a decode step spread over the engine thread and helper threads, on the CPU.

The torch engine's thread runs torch with one intra-op thread (OpenMP barriers stall on shared cores, see
TorchEngine.threads), so without help a step uses one core. Its widest matmul, the LM head, is split into
independent pieces instead: blocks of vocabulary columns (trtbuild.runtime.lm_head), each one torch op
that releases the GIL.

Pieces are claimed one at a time by whichever thread is free, the caller included, so a
helper that the OS does not schedule only leaves more pieces to the caller. The caller never waits long
for a straggler: once no piece is left to claim, it waits at most about one piece's time for the helpers'
pieces in flight, then computes those itself (the helper's late result is dropped). A step is therefore
never much slower than the caller alone, however busy the other cores are.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


class _Job:
    def __init__(self, fn: Callable[[int], T], count: int):
        self.fn, self.count = fn, count
        self.results: list = [None] * count
        self._claims = itertools.count()  # next() is atomic under the GIL: each index is claimed once
        self.done = threading.Condition()

    def work(self) -> int:
        """Compute pieces until none is left to claim; return how many this thread computed."""
        computed = 0
        for index in self._claims:
            if index >= self.count:
                return computed
            try:
                result = self.fn(index)
            except Exception:  # the caller computes this piece again and sees the error itself
                continue
            results = self.results
            if results is None:  # the caller finished without this piece
                return computed
            results[index] = result
            computed += 1
            with self.done:
                self.done.notify()
        return computed


class SplitRunner:
    """`map(fn, count)` -> [fn(0), ..., fn(count - 1)], computed by the caller and `helpers` threads.

    fn must not change shared state, since a piece may run twice (the caller's copy and a helper's late
    one), and must not return None (a piece not computed yet). With no helpers the caller computes every
    piece itself, in order."""

    def __init__(self, helpers: int, name: str = "split"):
        self.helpers, self.name = helpers, name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []  # started by the first map(): none for an unused runner
        self._starting = threading.Lock()  # map() may come from two threads (a step, and a score())

    def map(self, fn: Callable[[int], T], count: int) -> list[T]:
        if count < 2:
            return [fn(i) for i in range(count)]
        if len(self._threads) < self.helpers:
            with self._starting:
                if len(self._threads) < self.helpers:
                    threads = [threading.Thread(target=self._serve, name=f"{self.name}-{i}", daemon=True)
                               for i in range(self.helpers)]
                    for thread in threads:
                        thread.start()
                    self._threads = threads
        job = _Job(fn, count)
        for _ in self._threads:
            self._jobs.put(job)
        start = time.perf_counter()
        mine = job.work()
        # A helper's piece in flight takes about as long as one of ours: wait that long, then do it here.
        grace = (time.perf_counter() - start) / mine if mine else 0.0
        deadline = time.perf_counter() + grace
        with job.done:
            while any(r is None for r in job.results) and (left := deadline - time.perf_counter()) > 0:
                job.done.wait(left)
        results, job.results = job.results, None
        return [fn(i) if r is None else r for i, r in enumerate(results)]

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _serve(self) -> None:
        torch.set_num_threads(1)  # thread-local: this thread's torch ops run on it alone
        with torch.inference_mode():
            while (job := self._jobs.get()) is not None:
                job.work()
