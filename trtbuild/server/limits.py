"""Connection-level limits: what a client can hold before the app sees a request, and after it answered.

uvicorn parses HTTP with httptools, which has no cap on a request head (a 96 MiB header was parsed in
18 s while /health stalled), starts no timer on a new connection (a silent one stays open for hours),
and cannot tell a stalled reader from a slow one. So `trtbuild serve` runs uvicorn with a subclass of its
httptools protocol that adds, per connection:

- a cap on the request head (request line + headers), counted on the raw bytes before the parser
  buffers them: 431 past it;
- a header timeout from the connection's first byte wait (or a request's first byte): 408 past it,
  or a plain close when nothing arrived;
- a write deadline: a response whose bytes sit unsent for `write_timeout` seconds without progress (a
  client that stopped reading) is dropped (connection aborted, its buffer freed) and counted;
- a connection limit: connections past it get one 503 in OpenAI's error shape, then are closed.

Idle keep-alive connections are closed by uvicorn's own `timeout_keep_alive`. Counters for every
rejection and dropped response are in /metrics. Defaults and their reasons: serve/README.md.
"""

from __future__ import annotations

import json
import logging
import resource
import socket
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trtbuild.server.errors import APIError

log = logging.getLogger("trtbuild.server")

LINGER_S = 2.0  # after a protocol-level error, keep reading (and discarding) this long so the client sees our answer
LINGER_BYTES = 1024 * 1024  # ... or until this much more arrived: then reset (a client still sending is not listening)


@dataclass
class ConnectionLimits:
    max_header_bytes: int = 32 * 1024  # nginx: large_client_header_buffers 4 x 8 KB
    header_timeout: float = 60.0  # nginx: client_header_timeout 60 s
    keep_alive_timeout: float = 5.0  # uvicorn's and vLLM's default: idle descriptors go back fast
    write_timeout: float = 60.0  # nginx: send_timeout 60 s (between two successful writes)
    max_connections: int = 1024  # past it: 503; about a default `ulimit -n` worth of sockets
    # Kernel memory one connection's unsent bytes may pin (Linux autotunes up to 4 MiB, which a client
    # that stops reading keeps); 256 KiB still streams 2.5 MB/s over a 100 ms round trip. 0: the OS's.
    send_buffer_bytes: int = 256 * 1024


class ConnectionMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.rejected = Counter("trtbuild:connections_rejected", "Connections answered and closed by a "
                                "connection-level limit.", ["reason"], registry=registry)
        self.dropped = Counter("trtbuild:responses_dropped", "Responses dropped because the client did not "
                               "read them within --write-timeout.", registry=registry)
        for reason in ("header_too_large", "header_timeout", "connection_limit"):
            self.rejected.labels(reason=reason)  # present at 0 from the start, so alerts can rate() them


def raw_error(error: APIError) -> bytes:
    """A complete HTTP/1.1 response for an error met before there is a request to hand to the app."""
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}.get(error.status, b"Error")
    head = [b"HTTP/1.1 %d %s" % (error.status, reason), b"content-type: application/json",
            b"content-length: %d" % len(body), b"connection: close"]
    head += [f"{k}: {v}".encode("latin-1") for k, v in error.headers.items()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def too_many_connections(limit: int) -> APIError:
    return APIError(503, f"The server has {limit} open connections, its limit (--max-connections). Retry "
                    "later, or reuse a keep-alive connection.", type="server_error", code="too_many_connections",
                    headers={"Retry-After": "1", "Connection": "close"})


def protocol_class(limits: ConnectionLimits, metrics: ConnectionMetrics) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these limits; pass it as uvicorn.Config(http=...)."""

    over_limit = too_many_connections(limits.max_connections)

    async def answer_over_limit(scope, receive, send):
        await over_limit.response()(scope, receive, send)

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if limits.send_buffer_bytes and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.send_buffer_bytes)
            self._in_head, self._head_bytes, self._tail = True, 0, b""
            self._discarding, self._discarded = False, 0
            self._write_timer = self._header_timer = None
            self._write_mark = 0
            # Any byte left unsent after a write pauses the app's writes (uvicorn's flow control) and
            # starts the write deadline; the kernel's socket buffers still absorb a normal client's lag.
            transport.set_write_buffer_limits(high=0)
            open_now = len(self.connections)
            if open_now > 2 * limits.max_connections:  # a flood: no descriptor held for an answer
                metrics.rejected.labels(reason="connection_limit").inc()
                transport.abort()
                return
            timeout = limits.header_timeout
            if open_now > limits.max_connections:  # answered 503 once its request head arrives
                metrics.rejected.labels(reason="connection_limit").inc()
                self.app = answer_over_limit
                timeout = min(timeout, LINGER_S)
            self._header_timer = self.loop.call_later(timeout, self._header_timed_out)

        def connection_lost(self, exc) -> None:
            for timer in (self._header_timer, self._write_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        # --- request head: size cap and timeout ---------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self._discarding:
                self._discarded += len(data)
                if self._discarded > LINGER_BYTES:
                    self.transport.abort()
                return
            if self._in_head:
                view = self._tail + data
                end = view.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
                if self._head_bytes > limits.max_header_bytes:
                    metrics.rejected.labels(reason="header_too_large").inc()
                    return self._refuse(APIError(
                        431, f"The request head (request line and headers) is larger than the server's limit "
                        f"of {limits.max_header_bytes} bytes (--max-header-bytes).", code="request_header_too_large"))
                self._tail = view[-3:]
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            if self._header_timer is None:  # a keep-alive connection's next request: its own deadline
                self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timed_out)

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes, self._tail = False, 0, b""
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().on_headers_complete()
            cycle = getattr(self, "cycle", None)
            if cycle is not None and cycle.scope is self.scope:  # (not after an upgrade request)
                self.scope["trtbuild.write_body"] = BodyWriter(cycle)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True  # whatever comes next on this connection is a new request head
            # the body is all here: reading it cannot stall, so ServerMiddleware sets no timer for it
            self.scope["trtbuild.body_complete"] = True

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or not self._in_head:
                return
            metrics.rejected.labels(reason="header_timeout").inc()
            if self._head_bytes == 0 and self.app is not answer_over_limit:
                self.transport.close()  # nothing was asked: nothing to answer (nginx does the same)
                return
            error = over_limit if self.app is answer_over_limit else APIError(
                408, f"The request head did not arrive within {limits.header_timeout:g} s (--header-timeout).",
                code="request_timeout")
            self._refuse(error)

        def _refuse(self, error: APIError) -> None:
            """Answer, then read and drop what the client still sends for a moment: closing a socket with
            unread data resets it, and the client would see a reset instead of our answer."""
            self._discarding = True
            self.transport.write(raw_error(error))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.abort)

        # --- write deadline --------------------------------------------------------------------------
        def pause_writing(self) -> None:
            super().pause_writing()
            self._write_mark = self.transport.get_write_buffer_size()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(limits.write_timeout, self._write_timed_out)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _write_timed_out(self) -> None:
            self._write_timer = None
            pending = self.transport.get_write_buffer_size()
            if not pending:
                return
            if pending < self._write_mark:  # the client reads, slowly: a new deadline from here
                self._write_mark = pending
                self._write_timer = self.loop.call_later(limits.write_timeout, self._write_timed_out)
                return
            metrics.dropped.inc()
            log.warning("dropped a response to %s: %d bytes unread for %g s (--write-timeout)",
                        (self.client or ("?",))[0], pending, limits.write_timeout)
            self.transport.abort()  # frees the buffer; the app sees http.disconnect and cleans up

    return GuardedHttpToolsProtocol


class BodyWriter:
    """Writes a streamed (chunked) response body now, without a coroutine, where the socket takes it: what
    uvicorn's ASGI `send` does, from a plain callback (the SSE writer runs from the engine's wake-up,
    trtbuild.server.generate.write_directly). Each call refuses (False, nothing written) where `send` would
    have to wait or do more: the app's writes are paused (bytes left unsent: the write deadline runs), the
    client left, or the response is not a started, unfinished chunked one."""

    __slots__ = ("cycle", "ended")

    def __init__(self, cycle):
        self.cycle = cycle
        self.ended = False  # end() completed the response: the app must not send the body's end again

    def writable(self) -> bool:
        cycle = self.cycle
        return not (cycle.flow.write_paused or cycle.disconnected or not cycle.response_started
                    or cycle.response_complete or not cycle.chunked_encoding)

    def write(self, data: bytes) -> bool:
        """One chunk of the body."""
        if not data or not self.writable():  # (an empty chunk would end a chunked body)
            return False
        self.cycle.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True

    def end(self, data: bytes) -> bool:
        """The last chunk and the end of the body, in one write, through uvicorn's own `send` (its completion:
        keep-alive or close, the connection's next request). Driven by hand: `send` waits only while writes
        are paused, which writable() has ruled out, so it runs to its end in this call."""
        if not self.writable():
            return False
        step = self.cycle.send({"type": "http.response.body", "body": data, "more_body": False})
        try:
            step.send(None)
        except StopIteration:
            self.ended = True
            return True
        step.close()  # (unreachable: send waits only at its start, for paused writes; closed there, it wrote nothing)
        return False


def raise_open_file_limit(limits: ConnectionLimits) -> None:
    """Each connection holds a descriptor: lift the soft limit towards the hard one when it is too low
    for --max-connections (plus over-limit answers and the engine's own files), as nginx and most
    servers do; warn when the hard limit does not allow it."""
    want = 2 * limits.max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < want:
        log.warning("the open-file limit (%d) is low for --max-connections %d; raise `ulimit -n` to %d",
                    target, limits.max_connections, want)
