"""The engine-thread -> event-loop hand-off: one wake-up per loop per engine step, not one per token.

A RequestStream consumed on an event loop (the server, the offline bench) has a listener there (an
asyncio.Event's set, or the server's SSE writer) that the engine thread must run through the loop
(call_soon_threadsafe: a write to the loop's self-pipe and a loop iteration each). With 256 streams at a
10 ms step that was 25,600 wake-ups a second; grouped per loop it is 100, and the listeners of one step
run back to back in one loop callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from typing import Callable


class LoopWaker:
    """Runs the listeners an event loop has on streams, with one call_soon_threadsafe (one write
    to the loop's self-pipe, one loop iteration) per batch of tokens instead of one per token. Inside
    `batched_wakeups()` (an engine step emitting a token for every running request) nothing is scheduled
    until the block ends; otherwise the first token schedules the loop and the ones emitted before it
    runs ride along."""

    _registry: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()
    _held = threading.local()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._scheduled = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopWaker:
        with cls._registry_lock:
            waker = cls._registry.get(loop)
            if waker is None:
                waker = cls._registry[loop] = cls(loop)
            return waker

    def wake(self, listener: Callable[[], None]) -> None:
        """Any thread: call `listener()` on the loop soon (a listener must not raise)."""
        held = getattr(LoopWaker._held, "wakers", None)
        if held is not None:  # inside batched_wakeups: collected without the lock, handed over at its end
            pending = held.get(self)
            if pending is None:
                pending = held[self] = []
            pending.append(listener)
            return
        self._add([listener])

    def _add(self, listeners: list[Callable[[], None]]) -> None:
        with self._lock:
            self._listeners += listeners
            if self._scheduled:
                return
            self._scheduled = True
        self._schedule()

    def _schedule(self) -> None:
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the loop is gone")
            loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # that loop is closed: its consumers are gone
            with self._lock:
                self._listeners, self._scheduled = [], False

    def _run(self) -> None:
        with self._lock:
            listeners, self._listeners, self._scheduled = self._listeners, [], False
        for listener in listeners:
            listener()


@contextlib.contextmanager
def batched_wakeups():
    """Engine side: wake each waiting event loop once, when the block ends, for every token emitted in it."""
    outer = getattr(LoopWaker._held, "wakers", None)
    LoopWaker._held.wakers = held = {} if outer is None else outer  # waker -> its listeners, in order
    try:
        yield
    finally:
        if outer is None:
            LoopWaker._held.wakers = None
            for waker, listeners in held.items():
                waker._add(listeners)
