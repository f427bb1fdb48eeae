"""A STUB ENGINE for measuring the serving path: no model, tokens at a fixed step time.

    python bench/stub_engine.py --port 18400 --step-ms 10 --max-batch-size 256     # serves model "stub-10ms"

It sits behind the real Engine interface (trtbuild.runtime.interface) and the real server
(trtbuild.server.create_app, under uvicorn as `trtbuild serve` runs it), so everything a token goes through
after the engine (RequestStream, detokenization, stop checks, the engine-thread -> event-loop hand-off, SSE
rendering, the socket) is the real code, at the rate a GPU engine would drive it: every `step_ms` one
token for each of up to `max_batch_size` running requests, like TensorRT-LLM's in-flight batching on an
H100 (10 ms a step for Mistral-7B at batch 256 gives 25,600 tokens/s). Waiting requests join at the next
step and get their first token there. Tokens cycle through the ids of an ordinary English text, so
detokenization does its usual work. It is never an engine: it is named stub everywhere it shows
(model id, backend, /version) and lives in bench/, outside the package.

It imports only the interface, so it also runs against an older checkout (PYTHONPATH) for A/B runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Sequence

from trtbuild.runtime import interface
from trtbuild.runtime.interface import Engine, EngineError, EngineInfo, RequestStream, SamplingParams
from trtbuild.tokenizer import Tokenizer

TEXT = ("The history of the city begins with a small market by the river, where farmers brought grain and "
        "traders from the coast sold salt, cloth and stories of places far away. ")


class StubEngine(Engine):
    def __init__(self, step_ms: float = 10.0, max_batch_size: int = 256, max_seq_len: int = 4096):
        self.step_s = step_ms / 1000
        self.tokenizer = Tokenizer.v3()
        getattr(self.tokenizer, "piece_texts", None)  # build the detokenization table before serving
        self.cycle = self.tokenizer.encode(TEXT * 4, bos=False)
        self.info = EngineInfo(name=f"stub-{step_ms:g}ms", variant="stub", backend="stub", model_id="stub",
                               max_seq_len=max_seq_len, max_batch_size=max_batch_size, max_input_len=max_seq_len - 1,
                               vocab_size=self.tokenizer.vocab_size, eos_id=self.tokenizer.eos_id,
                               precision={"note": "stub engine: no model, fixed step time"})
        self._waiting: deque[RequestStream] = deque()
        self._running: list[RequestStream] = []
        self._lock = threading.Condition()
        self._closing = False
        self.steps = 0
        self.late_steps = 0  # steps that started more than one step late (the process could not keep up)
        self.lateness_s: list[float] = []  # how late each step with requests started (the GIL, the core)
        self._thread = threading.Thread(target=self._loop, name="stub-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None) -> RequestStream:
        if self._closing:
            raise EngineError("stub engine is closed")
        stream = self.new_stream(prompt_ids, params, request_id)
        with self._lock:
            self._waiting.append(stream)
            self._lock.notify()
        return stream

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout=10)
        for stream in [*self._running, *self._waiting]:
            stream.finish("abort")

    def _loop(self) -> None:
        profile = os.environ.get("STUB_PROFILE")
        if profile:  # the engine thread's own profile, beside the event loop's
            import cProfile

            profiler = cProfile.Profile()
            try:
                profiler.runcall(self._steps)
            finally:
                profiler.dump_stats(profile + ".engine")
        else:
            self._steps()

    def _steps(self) -> None:
        batched = getattr(interface, "batched_wakeups", contextlib.nullcontext)  # older checkouts lack it
        next_step = time.perf_counter()
        while True:
            with self._lock:
                while not (self._closing or self._waiting or self._running):
                    self._lock.wait()
                    next_step = time.perf_counter() + self.step_s  # a new request waits for the next step
                if self._closing:
                    return
                self._running = [s for s in self._running if s.finish_reason is None]  # (no property call each)
                while self._waiting and len(self._running) < self.info.max_batch_size:
                    stream = self._waiting.popleft()
                    if not stream.finished:
                        stream.mark_scheduled()
                        self._running.append(stream)
                running = list(self._running)
            delay = next_step - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -self.step_s:
                self.late_steps += 1
            self.lateness_s.append(time.perf_counter() - next_step)
            next_step = max(next_step + self.step_s, time.perf_counter() - self.step_s)
            self.steps += 1
            with batched():
                for stream in running:
                    stream.emit_token(self.cycle[len(stream.token_ids) % len(self.cycle)])


def track_gc() -> dict:
    """CPU time (of the collecting thread) spent in garbage collection, by generation (reported at exit: is GC worth tuning?)."""
    import gc

    out = {"gc_s": [0.0, 0.0, 0.0], "gc_collections": [0, 0, 0]}
    started = [0.0]

    def callback(phase, info):
        if phase == "start":
            started[0] = time.thread_time()
        else:
            out["gc_s"][info["generation"]] += time.thread_time() - started[0]
            out["gc_collections"][info["generation"]] += 1

    gc.callbacks.append(callback)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-queue", type=int, default=1024)
    args = parser.parse_args(argv)

    import uvicorn

    from trtbuild.server import ServerSettings, create_app

    gc_time = track_gc()
    if os.environ.get("STUB_GC_THRESHOLD"):  # experiments: "700,10,10" is CPython's default
        import gc

        gc.set_threshold(*map(int, os.environ["STUB_GC_THRESHOLD"].split(",")))
    engine = StubEngine(args.step_ms, args.max_batch_size)
    app = create_app(engine, ServerSettings(max_queue=args.max_queue))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(json.dumps({"url": url, "model": engine.info.name, "pid": os.getpid(),
                      "engine_tid": engine._thread.native_id}), flush=True)  # its CPU: /proc/PID/task/TID/stat
    extra = {}
    try:  # the HTTP protocol `trtbuild serve` runs (uvicorn's httptools plus the connection limits)
        from trtbuild.server.limits import protocol_class

        extra["http"] = protocol_class(app.state.server.settings.limits, app.state.server.connection_metrics)
    except (ImportError, AttributeError):  # an older checkout (A/B): uvicorn's own
        pass
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", **extra)
    # uvicorn re-raises the SIGTERM it caught once it has shut down: with a no-op handler the counters below
    # still get printed
    signal.signal(signal.SIGTERM, lambda *_: None)
    profile = os.environ.get("STUB_PROFILE")  # a path: cProfile of the event loop's thread, written at exit
    if profile:
        import cProfile

        cProfile.runctx("uvicorn.Server(config).run(sockets=[sock])", globals(), locals(), profile)
    else:
        uvicorn.Server(config).run(sockets=[sock])
    import gc

    late = sorted(engine.lateness_s) or [0.0]
    print(json.dumps({"steps": engine.steps, "late_steps": engine.late_steps,
                      "step_lateness_ms": {q: round(late[int(f * (len(late) - 1))] * 1e3, 2) for q, f in
                                           (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}, **gc_time,
                      "gc_frozen": gc.get_freeze_count(), "gc_tracked": len(gc.get_objects()),
                      "gc_threshold": gc.get_threshold()}), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
