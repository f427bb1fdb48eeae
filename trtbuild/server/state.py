"""The server's view of its engine: loading, admission (the bounded queue), submission, shutdown.

Everything here runs on the event loop thread, so the counters need no locks; the engine is thread-safe
and runs its own loop (trtbuild.runtime.interface).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from trtbuild.errors import TrtbuildError
from trtbuild.heap import freeze_heap, prefer_engine_thread
from trtbuild.runtime.interface import ContextLengthExceeded, Engine, EngineError, RequestStream, SamplingParams
from trtbuild.server.errors import APIError, bad_request, model_not_found, overloaded, unavailable
from trtbuild.server.limits import ConnectionLimits, ConnectionMetrics
from trtbuild.server.metrics import Metrics
from trtbuild.server.render import TokenTexts

log = logging.getLogger("trtbuild.server")


@dataclass
class ServerSettings:
    served_model_name: str | None = None  # the model id clients send; default: the engine's name
    api_key: str | None = None  # when set, /v1/*, /tokenize and /detokenize need `Authorization: Bearer KEY`
    max_queue: int = 256  # sequences admitted beyond the engine's max batch size; more -> 429
    max_body_bytes: int = 2 * 1024 * 1024  # larger request bodies -> 413
    shutdown_timeout: float = 10.0  # seconds in-flight requests get to finish on SIGTERM before being cancelled
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)  # headers, timeouts, connections


def warm_up(engine: Engine) -> None:
    """Tables the first request would otherwise build on the event loop (the longest piece: a scan of the
    vocabulary, ~50 ms), built once the engine is there."""
    from trtbuild.server.guards import max_piece_chars

    with contextlib.suppress(Exception):  # a test double without a full tokenizer: the first request builds it
        max_piece_chars(engine.tokenizer)


class ServerState:
    def __init__(self, engine: Engine | Callable[[], Engine], settings: ServerSettings):
        self.settings = settings
        self.engine: Engine | None = engine if isinstance(engine, Engine) else None
        self._loader = None if self.engine is not None else engine
        self.load_error: str | None = None
        self.dead: str | None = None
        self.shutting_down = False
        # Admission counts engine work, not open sockets: a sequence stops counting when it finishes,
        # even while its response still waits for a slow client (bounded by --write-timeout).
        self._active: set[RequestStream] = set()  # submitted, maybe finished since (pruned on each count)
        self.streams: set[RequestStream] = set()  # every stream whose response is not over, for shutdown
        self.draining = False  # SIGTERM with a drain period: readiness 503, requests still served (management.py)
        self.created = int(time.time())
        self.metrics = Metrics(running=lambda: self.engine.num_running if self.engine else 0,
                               waiting=lambda: self.engine.num_waiting if self.engine else 0,
                               admitted=lambda: self.admitted)
        self.connection_metrics = ConnectionMetrics(self.metrics.registry)
        self._token_texts: TokenTexts | None = None

    @property
    def token_texts(self) -> TokenTexts:
        if self._token_texts is None:
            self._token_texts = TokenTexts(self.engine.tokenizer)
        return self._token_texts

    # --- loading ---------------------------------------------------------------------------------------
    def start_loading(self, on_error: Callable[[Exception], None] | None = None) -> None:
        """Load the engine in a thread, so the socket answers (/health 503) while weights load."""
        if self._loader is None:
            warm_up(self.engine)
            freeze_heap()
            prefer_engine_thread()
            return

        def load():
            try:
                self.engine = self._loader()
                warm_up(self.engine)
                freeze_heap()
                prefer_engine_thread()
                log.info("engine %s loaded", self.engine.info.name)
            except Exception as exc:  # noqa: BLE001 - reported through /health and the serve command
                self.load_error = str(exc) if isinstance(exc, TrtbuildError) else f"{type(exc).__name__}: {exc}"
                log.error("engine failed to load: %s", exc)
                if on_error is not None:
                    on_error(exc)

        threading.Thread(target=load, name="trtbuild-engine-load", daemon=True).start()

    @property
    def health(self) -> tuple[int, str]:
        if self.load_error:
            return 503, f"engine failed to load: {self.load_error}"
        if self.engine is None:
            return 503, "loading the engine"
        if self.dead:
            return 503, f"engine stopped: {self.dead}"
        if self.shutting_down:
            return 503, "shutting down"
        return 200, "ok"

    def ready(self) -> Engine:
        """The engine, or a 503 that says why there is none to use."""
        status, why = self.health
        if status != 200:
            raise unavailable(f"The server cannot take requests now: {why}.")
        return self.engine

    @property
    def model_name(self) -> str:
        return self.settings.served_model_name or (self.engine.info.name if self.engine else "loading")

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise model_not_found(model)

    # --- admission and submission ----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.engine.info.max_batch_size + self.settings.max_queue

    @property
    def admitted(self) -> int:
        """Sequences submitted and still generating (O(capacity): finished ones are dropped as counted)."""
        self._active = {s for s in self._active if not s.finished}
        return len(self._active)

    def admit(self, sequences: int) -> None:
        """429 unless `sequences` more fit now: checked before any tokenization, and again at submit."""
        if len(self._active) + sequences <= self.capacity:  # fits even counting finished ones: no need to count
            return
        admitted = self.admitted
        if admitted + sequences > self.capacity:
            raise overloaded(admitted, self.capacity)

    def full(self) -> APIError | None:
        """The 429 for a generation request when not even one more sequence fits (no engine yet: None)."""
        if self.engine is None or self.health[0] != 200 or len(self._active) < self.capacity:
            return None
        admitted = self.admitted
        return overloaded(admitted, self.capacity) if admitted >= self.capacity else None

    def submit(self, engine: Engine, jobs: Sequence[tuple[list[int], SamplingParams]], request_id: str,
               prompt_param: str) -> list[RequestStream]:
        """Submit every sequence of a request, or none of them (a 4xx/5xx APIError)."""
        self.admit(len(jobs))
        streams: list[RequestStream] = []
        try:
            for i, (prompt, params) in enumerate(jobs):
                streams.append(engine.submit(prompt, params, request_id=f"{request_id}-{i}"))
        except ContextLengthExceeded as exc:
            raise bad_request(str(exc), param=prompt_param, code="context_length_exceeded") from None
        except ValueError as exc:
            raise bad_request(str(exc), param=prompt_param) from None
        except EngineError as exc:
            self.dead = str(exc)
            log.error("engine is not running: %s", exc)
            raise unavailable(f"The engine is not running: {exc}") from None
        finally:
            if len(streams) < len(jobs):
                for stream in streams:
                    stream.cancel()
        self._active.update(streams)
        self.streams.update(streams)
        return streams

    def release(self, streams: Sequence[RequestStream]) -> None:
        """The request is over (finished, failed or its client left): stop what still runs, free its slots."""
        for stream in streams:
            stream.cancel()  # a no-op for finished streams
            self.streams.discard(stream)
            self._active.discard(stream)

    # --- shutdown ----------------------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """SIGTERM: refuse new work; cancel what is still running after the grace period."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.info("shutting down: %d sequences in flight get %.0f s to finish", len(self.streams),
                 self.settings.shutdown_timeout)
        asyncio.get_running_loop().call_later(self.settings.shutdown_timeout, self.cancel_all)

    def cancel_all(self) -> None:
        if self.streams:
            log.warning("cancelling %d sequences still running at shutdown", len(self.streams))
        for stream in list(self.streams):
            stream.cancel()

    def close(self) -> None:
        self.shutting_down = True
        self.cancel_all()
        if self.engine is not None:
            self.engine.close()
