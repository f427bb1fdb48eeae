"""The generation interface: the only thing the server, validation and benchmarks know about an engine.

    engine = load_engine(path)                     # trtbuild.runtime.load_engine
    stream = engine.submit(prompt_ids, SamplingParams(max_tokens=64, temperature=0))
    for event in stream:                           # or `async for`, or stream.result()
        print(event.text, end="")
    stream.cancel()                                # stops its work; other requests carry on

A backend only turns prompts into token ids (plus logprobs) and calls `stream.emit_token()` for each;
RequestStream does everything else once for all backends: detokenization, stop strings and stop
tokens, max_tokens and the context limit, finish reasons, timings, cancellation and the hand-off
between the engine's thread and the caller's thread or event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from abc import ABC, abstractmethod
from typing import AsyncIterator, Callable, Iterator, Sequence

from trtbuild.runtime.detok import TextStream
# the request and result types live in records.py; engines and callers import them from here
from trtbuild.runtime.records import (FINISH_REASONS, EngineError, EngineInfo, GenerationResult,  # noqa: F401
                                      JSONMixin, RequestTimings, SamplingParams, TokenEvent)
from trtbuild.runtime.wakeups import LoopWaker, batched_wakeups  # noqa: F401 - engines import it from here
from trtbuild.tokenizer import Tokenizer


class RequestStream:
    """One request in flight. The engine thread calls emit_token/finish; callers iterate or wait.

    Text deltas are decoded incrementally with the last prompt tokens as context, so the first token's
    leading space comes out as it would in decode(prompt + output).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams,
                 max_seq_len: int, request_id: str | None = None, on_cancel=None):
        self.request_id = request_id or uuid.uuid4().hex
        self.prompt_token_ids = list(prompt_ids)
        self.params = params
        self.max_seq_len = max_seq_len
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[list[tuple[int, float]]] = []
        self.events: list[TokenEvent] = []
        self.timings = RequestTimings(arrival_ns=time.perf_counter_ns())
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.error: str | None = None
        self._text = TextStream(tokenizer, context_ids=tokenizer.decode_context(self.prompt_token_ids), stop=params.stop,
                                include_stop=params.include_stop_str_in_output, min_tokens=params.min_tokens)
        self._on_cancel = on_cancel
        # what emit_token checks, read once: eos (-1 when ignored), stop ids, the token count that ends it
        self._eos_id = -1 if params.ignore_eos else tokenizer.eos_id
        self._stop_ids = frozenset(params.stop_token_ids)
        self._min_tokens = params.min_tokens
        self._length_limit = min(params.max_tokens, max_seq_len - len(self.prompt_token_ids))
        # one re-entrant lock, taken directly on the engine's per-token path (Condition's own __enter__ is a
        # Python call); the condition is notified only while a thread waits on it (__iter__, result())
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._sync_waiters = 0
        # (waker, listener) pairs run on their loops after each event; replaced, never mutated: no copy per token
        self._listeners: tuple[tuple[LoopWaker, Callable[[], None]], ...] = ()

    # --- engine side ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def mark_scheduled(self) -> None:
        if not self.timings.scheduled_ns:
            self.timings.scheduled_ns = time.perf_counter_ns()

    def emit_token(self, token_id: int, logprob: float | None = None,
                   top_logprobs: list[tuple[int, float]] | None = None) -> bool:
        """Record one generated token; returns True when the request is now finished. The engine's hot
        path (once per running request per step): the params it checks are read once, in __init__."""
        token_id = int(token_id)
        with self._lock:  # atomic against cancel() from another thread: no token lands after "abort"
            if self.finish_reason is not None:
                return True
            now = time.perf_counter_ns()
            if not self.timings.first_token_ns:
                self.timings.first_token_ns = now
            index = len(self.token_ids)
            self.token_ids.append(token_id)
            if logprob is not None:
                self.logprobs.append(float(logprob))
            if top_logprobs is not None:
                self.top_logprobs.append(top_logprobs)
            reason, text = None, ""
            # (the comparison that is almost always false first: this runs once per token of every stream)
            if token_id == self._eos_id and index >= self._min_tokens:
                reason, self.stop_reason = "stop", None
            elif token_id in self._stop_ids and index >= self._min_tokens:
                reason, self.stop_reason = "stop", token_id
            else:
                text = self._text.push(token_id)
                if self._text.stopped is not None:
                    reason, self.stop_reason = "stop", self._text.stopped
            if index + 1 >= self._length_limit and reason is None:
                reason = "length"
            if reason is None:  # _append's work, inline for the common case
                self.events.append(TokenEvent(token_id, index, text, logprob, top_logprobs, None, now))
                if self._sync_waiters:
                    self._cond.notify_all()
                listeners = self._listeners
            else:
                text += self._text.flush()
                listeners = self._append(TokenEvent(token_id, index, text, logprob, top_logprobs, reason, now), reason)
        for waker, listener in listeners:
            waker.wake(listener)
        return reason is not None

    def finish(self, reason: str, error: str | None = None) -> None:
        """End the request without a token (abort, error). Idempotent."""
        with self._lock:  # the lock is re-entrant; _publish takes it again
            self._finish(reason, error)

    def _finish(self, reason: str, error: str | None) -> None:
        if self.finished:
            return
        self.error = error
        tail = self._text.flush() if reason != "error" else ""
        event = TokenEvent(token_id=-1, index=len(self.token_ids), text=tail, finish_reason=reason,
                           time_ns=time.perf_counter_ns())
        self._publish(event, reason)

    def _publish(self, event: TokenEvent, reason: str | None) -> None:
        with self._lock:
            listeners = self._append(event, reason)
        for waker, listener in listeners:
            waker.wake(listener)

    def _append(self, event: TokenEvent, reason: str | None) -> tuple:
        """With the lock held: record the event (its reason ends the request); returns the listeners to wake."""
        self.events.append(event)
        if reason is not None:
            self.finish_reason = reason
            self.timings.finished_ns = event.time_ns
        if self._sync_waiters:
            self._cond.notify_all()
        return self._listeners

    # --- caller side ------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        return self._text.text

    def cancel(self) -> None:
        """Stop generating: the engine drops the request at its next step and frees its slot."""
        if self.finished:
            return
        if self._on_cancel is not None:
            self._on_cancel(self)
        self.finish("abort")

    def __iter__(self) -> Iterator[TokenEvent]:
        seen = 0
        while True:
            with self._cond:
                while seen == len(self.events) and not self.finished:
                    self._wait()
                new, seen = self.events[seen:], len(self.events)
                done = self.finished and seen == len(self.events)
            yield from new
            if done:
                return

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` on the running event loop after new events (batched: once per engine step);
        returns the function that stops it. The listener reads `events` itself, without the lock (see
        aiter_batches), and must not raise."""
        entry = (LoopWaker.of(asyncio.get_running_loop()), listener)
        with self._lock:
            self._listeners = (*self._listeners, entry)

        def stop() -> None:
            with self._lock:
                self._listeners = tuple(e for e in self._listeners if e is not entry)
        return stop

    async def aiter_batches(self, start: int = 0) -> AsyncIterator[list[TokenEvent]]:
        """Async iteration that yields every event available at once (a server can coalesce them), from
        events[start:]."""
        flag = asyncio.Event()
        stop = self.listen(flag.set)
        seen = start
        try:
            while True:
                flag.clear()
                # No lock (it would make the loop wait for the engine thread mid-step): the engine appends an
                # event before it sets finish_reason, so once `finished` reads true the slice after it holds
                # the last event; a list slice is atomic under the GIL.
                done = self.finish_reason is not None
                new = self.events[seen:]
                seen += len(new)
                if new:
                    yield new
                if done:
                    return
                if not new:
                    await flag.wait()
        finally:
            stop()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        async for batch in self.aiter_batches():
            for event in batch:
                yield event

    def result(self, timeout: float | None = None) -> GenerationResult:
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
                self._wait(left)
        return self.snapshot()

    def _wait(self, timeout: float | None = None) -> None:
        """Wait on the condition (lock held), counted so that _publish notifies only while someone waits."""
        self._sync_waiters += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._sync_waiters -= 1

    async def aresult(self) -> GenerationResult:
        async for _ in self.aiter_batches():
            pass
        return self.snapshot()

    def snapshot(self) -> GenerationResult:
        return GenerationResult(
            request_id=self.request_id, prompt_token_ids=self.prompt_token_ids, token_ids=list(self.token_ids),
            text=self.text, finish_reason=self.finish_reason or "", stop_reason=self.stop_reason,
            logprobs=list(self.logprobs) if self.params.logprobs else None,
            top_logprobs=list(self.top_logprobs) if self.params.top_logprobs else None,
            timings=dataclasses.replace(self.timings), error=self.error)


class Engine(ABC):
    """A loaded engine. Thread-safe: submit from any thread; the backend runs its own loop."""

    info: EngineInfo
    tokenizer: Tokenizer

    def new_stream(self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None,
                   on_cancel=None) -> RequestStream:
        """Check a request against the engine's limits and wrap it in a stream (backends call this)."""
        params.check()
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) > self.info.max_input_len or len(prompt_ids) >= self.info.max_seq_len:
            raise ContextLengthExceeded(len(prompt_ids), params.max_tokens, self.info.max_seq_len,
                                        self.info.max_input_len)
        bad = [t for t in prompt_ids if not 0 <= t < self.info.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.info.vocab_size})")
        bad = [t for t in params.logit_bias if not 0 <= int(t) < self.info.vocab_size]
        if bad:
            raise ValueError(f"logit_bias token id {bad[0]} is outside the vocabulary [0, {self.info.vocab_size})")
        return RequestStream(self.tokenizer, prompt_ids, params, self.info.max_seq_len, request_id, on_cancel)

    @abstractmethod
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
               request_id: str | None = None) -> RequestStream:
        """Queue a request and return at once; raises ValueError/ContextLengthExceeded on bad input."""

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[GenerationResult]:
        """Run many requests concurrently (batched by the backend) and wait for all of them."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        streams = [self.submit(p, sp) for p, sp in zip(prompts, params)]
        return [s.result() for s in streams]

    def score(self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]):
        """Teacher-forced log-probabilities: a float32 numpy array [len(continuation), vocab] whose row i
        is log p(. | prompt + continuation[:i]). Raises NotImplementedError where the backend cannot."""
        raise NotImplementedError(f"{self.info.backend} engine {self.info.name} cannot score sequences")

    @property
    def num_running(self) -> int:
        return 0

    @property
    def num_waiting(self) -> int:
        return 0

    def close(self) -> None:
        """Finish the engine's loop; requests still in flight end with finish_reason "abort"."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ContextLengthExceeded(ValueError):
    """The prompt does not fit the engine (the server answers 400 context_length_exceeded)."""

    def __init__(self, prompt_tokens: int, max_tokens: int, max_seq_len: int, max_input_len: int):
        self.prompt_tokens, self.max_tokens, self.max_seq_len = prompt_tokens, max_tokens, max_seq_len
        limit = min(max_input_len, max_seq_len - 1)
        super().__init__(
            f"This model's maximum context length is {max_seq_len} tokens (prompts up to {limit}). However, "
            f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or completion.")
