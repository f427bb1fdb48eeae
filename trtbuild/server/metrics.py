"""Prometheus metrics with vLLM's names under a `trtbuild:` prefix, so existing dashboards carry over.

Each app has its own registry (several apps can live in one process, as in tests). Latencies come from
the RequestStream's own perf_counter stamps, observed once when a request ends: nothing is recorded
per token on the hot path, and a request's inter-token latencies go in with one update per bucket.
"""

from __future__ import annotations

import bisect
from typing import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from trtbuild.runtime.interface import RequestStream

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
               0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class Metrics:
    def __init__(self, running: Callable[[], int], waiting: Callable[[], int], admitted: Callable[[], int]):
        self.registry = registry = CollectorRegistry()
        p = "trtbuild:"
        Gauge(p + "num_requests_running", "Requests the engine is running (in its batch).",
              registry=registry).set_function(running)
        Gauge(p + "num_requests_waiting", "Requests queued in the engine, not yet scheduled.",
              registry=registry).set_function(waiting)
        Gauge(p + "num_requests_admitted", "Sequences admitted by the server and not finished "
              "(bounded by max batch size + --max-queue).", registry=registry).set_function(admitted)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Time to first token.",
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Time between consecutive generated tokens.",
                             buckets=ITL_BUCKETS, registry=registry)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Arrival to last token.",
                             buckets=LATENCY_BUCKETS, registry=registry)
        self.queue = Histogram(p + "request_queue_time_seconds", "Arrival to first scheduled in a batch.",
                               buckets=LATENCY_BUCKETS, registry=registry)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed.", registry=registry)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated.", registry=registry)
        self.success = Counter(p + "request_success", "Finished sequences by finish reason.",
                               ["finished_reason"], registry=registry)
        # every HTTP response by status (429 overload, 503 not ready, 5xx): error-rate alerts need it
        self.responses = Counter(p + "http_responses", "HTTP responses by status code (499: client left first).",
                                 ["code"], registry=registry)
        self._by_status: dict[int, object] = {}

    def count_response(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:  # labels() costs a lock and a tuple build a request; a status's child is reused
            child = self._by_status[status] = self.responses.labels(code=str(status))
        child.inc()

    def observe(self, streams: Sequence[RequestStream], prompt_tokens: int) -> None:
        """Record a finished request (all its choices). prompt_tokens counts each prompt once, as usage does."""
        self.prompt_tokens.inc(prompt_tokens)
        for stream in streams:
            t = stream.timings
            self.generation_tokens.inc(len(stream.token_ids))
            self.success.labels(finished_reason=stream.finish_reason or "abort").inc()
            if t.scheduled_ns:
                self.queue.observe(t.queue_s)
            if t.first_token_ns:
                self.ttft.observe((t.first_token_ns - t.arrival_ns) / 1e9)
            if t.finished_ns:
                self.e2e.observe((t.finished_ns - t.arrival_ns) / 1e9)
            stamps = [e.time_ns for e in stream.events if e.token_id >= 0]
            observe_many(self.itl, [(after - before) / 1e9 for before, after in zip(stamps, stamps[1:])])

    def render(self) -> bytes:
        return generate_latest(self.registry)


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """histogram.observe(v) for every v, with one increment per bucket: a request's inter-token latencies
    observed one by one cost ~20 us each (lock, bucket scan), as much as serving the token. Uses the
    Histogram's internals (prometheus_client 0.x: _upper_bounds, _buckets, _sum); falls back if they move."""
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        i = bisect.bisect_left(bounds, value)  # first bucket whose upper bound >= value, as observe() picks
        counts[i] = counts.get(i, 0) + 1
    for i, n in counts.items():
        buckets[i].inc(n)
    total.inc(sum(values))
