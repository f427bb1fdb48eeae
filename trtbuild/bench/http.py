"""The online bench's HTTP client for streamed requests: HTTP/1.1 keep-alive connections whose response
bytes are handed to a callback straight from the socket's read, stamped there.

Why not aiohttp for this part (it still probes the server): at GPU rates (256 streams of a 10 ms step,
25,600 SSE events a second) every read went through aiohttp's StreamReader, a task wake-up and an async
iterator before it was stamped, and one client core fell behind (loop-lag p99 40-60 ms at 256 streams,
every such run marked invalid). Here a read is parsed by httptools (the C parser uvicorn uses; it undoes
chunked framing) and the body piece goes to `on_body` in the same callback: no task runs until the
response ends. Bodies may be framed by Content-Length, by chunks or by the server closing the connection;
TLS (https URLs) and a bearer key are supported; proxies are not (neither were they with
the aiohttp session, which ignored the environment's).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable
from urllib.parse import urlsplit

import httptools


class HTTPStatusError(Exception):
    """A response other than 200: its status and the start of its body."""

    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its response parsed as it arrives."""

    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.error_body = bytearray()
        self.status = 0
        self.framed = False  # Content-Length or chunked; else the body ends when the server closes
        self.reusable = False
        self.lost = False

    # --- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # on_body's sink raised: that error, not the parser's
            self._fail(exc.__context__ or ConnectionError(str(exc)))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # an upgrade was not asked for
            self._fail(ConnectionError(f"unparseable HTTP response: {exc}"))

    def connection_lost(self, exc) -> None:
        self.lost = True
        if exc is None and self.status and not self.framed and self.done is not None and not self.done.done():
            self.done.set_result(self.status)  # a close-delimited body (no length, not chunked) ends here
            return
        self._fail(ConnectionError(f"the server closed the connection{f': {exc}' if exc else ''}"))

    # --- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status == 200:
            self.sink(body)
        elif len(self.error_body) < 4096:
            self.error_body += body

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.done is not None and not self.done.done():
            self.done.set_result(self.status)

    # --- ours --------------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None and not self.lost:
            self.transport.abort()


class StreamClient:
    """POSTs whose 200 response bodies stream into a callback; idle connections are kept per host.

        client = StreamClient(headers={"Authorization": "Bearer ..."}, timeout_s=600)
        await client.post("http://host:8000", "/v1/completions", body_bytes, on_body)   # raises on errors
        client.close()
    """

    def __init__(self, headers: dict[str, str] | None = None, timeout_s: float | None = None):
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode("latin-1")
        self.timeout_s = timeout_s
        self._idle: dict[str, list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, path: str, body: bytes, on_body: Callable[[bytes], None]) -> None:
        """Send `body` (JSON) to url + path; every piece of a 200 response's body goes to on_body as it
        is read. Raises HTTPStatusError for another status, TimeoutError past timeout_s, ConnectionError
        or OSError when the connection fails."""
        for attempt in (1, 2):
            conn, reused = await self._connection(url)
            try:
                return await self._exchange(conn, url, path, body, on_body)
            except ConnectionError:
                # a kept-alive connection the server closed just as we reused it (its idle timeout):
                # nothing of the response came, so the request is sent again once on a new connection
                if not reused or conn.status or attempt == 2:
                    raise

    async def _exchange(self, conn: _Connection, url: str, path: str, body: bytes,
                        on_body: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        conn.done, conn.sink, conn.status, conn.error_body = loop.create_future(), on_body, 0, bytearray()
        parts = urlsplit(url)  # a URL may carry a path prefix (a gateway's route): the request goes under it
        target = (parts.path.rstrip("/") + path).encode()
        conn.transport.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n%s\r\n%s" % (target, parts.netloc.encode("latin-1"), len(body),
                                                                  self.extra, body))
        try:
            async with asyncio.timeout(self.timeout_s):
                status = await conn.done
        except BaseException:
            conn._fail(ConnectionError("request abandoned"))  # never reuse a connection mid-response
            raise
        finally:
            conn.sink = None
        if conn.reusable and not conn.lost:
            self._idle.setdefault(url, []).append(conn)
        elif not conn.lost:
            conn.transport.close()
        if status != 200:
            raise HTTPStatusError(status, bytes(conn.error_body))

    async def _connection(self, url: str) -> tuple[_Connection, bool]:
        idle = self._idle.get(url)
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn, True
        parts = urlsplit(url)
        tls = None
        if parts.scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        port = parts.port or (443 if tls else 80)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout_s):
            _, conn = await loop.create_connection(_Connection, parts.hostname, port, ssl=tls)
        return conn, False

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                if not conn.lost:
                    conn.transport.close()
        self._idle.clear()
