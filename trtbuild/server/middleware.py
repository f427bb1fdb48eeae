"""One plain ASGI middleware for what every request goes through before and after its handler:
request id, API key, admission (429 before the body is read, when nothing more fits), body size limit
and read timeout, and one JSON access-log line (quoted client values clipped).

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which re-buffers streaming responses and costs a
task per request; here a streamed SSE response passes through untouched.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass

from starlette.exceptions import HTTPException

from trtbuild.errors import clip
from trtbuild.server.errors import APIError
from trtbuild.server.render import random_hex

access_log = logging.getLogger("trtbuild.server.access")
_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+

# Paths that never need the API key: probes and scrapers must work without it.
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/version", "/ping",
                          "/v1/health/live", "/v1/health/ready", "/v1/version"})  # NIM's probes (management.py)
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Generation routes: answered 429 before their body is read or parsed when the queue has no room left.
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass
class AccessRecord:
    """What a handler tells the access log about its request (found in scope["trtbuild"])."""

    request_id: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    finish_reasons: list[str] | None = None
    error: str | None = None


class ServerMiddleware:
    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout: float | None = None,
                 full=None, on_response=None):
        self.app = app
        self.on_response = on_response  # called with each response's status (metrics), 499 if none was sent
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout  # seconds between two pieces of a request body (nginx client_body_timeout)
        self.full = full  # () -> APIError | None: the 429 to answer when no sequence fits in the queue

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        given_id = headers.get(b"x-request-id", b"").decode("latin-1")
        record = AccessRecord(given_id if _SAFE_ID.fullmatch(given_id) else random_hex())
        scope["trtbuild"] = record
        # the SSE body's bytes go here, past the layers below (only a response's head needs them)
        scope["trtbuild.send"] = send
        status = 0

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", record.request_id.encode())]
            await send(message)

        try:
            rejection = self._reject(scope, headers)
            if rejection is not None:
                record.error = rejection.message
                return await rejection.response()(scope, receive, send_with_id)
            await self.app(scope, self._limited(receive, scope), send_with_id)
        finally:
            if self.on_response is not None:
                self.on_response(status or 499)
            self._log(scope, record, status, time.perf_counter() - start)

    def _reject(self, scope, headers: dict) -> APIError | None:
        if self.api_key is not None and scope["path"] not in PUBLIC_PATHS:
            auth = headers.get(b"authorization", b"")
            scheme, _, key = auth.partition(b" ")
            # constant-time comparison: the time taken must not reveal how much of a guess was right
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.api_key):
                return APIError(401, "Incorrect or missing API key. Send `Authorization: Bearer <key>`.",
                                code="invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        if self.full is not None and scope["path"] in GENERATION_PATHS and scope["method"] == "POST":
            return self.full()  # a burst of rejections costs no JSON parsing, so none waits behind another
        return None

    def _too_large(self) -> APIError:
        return APIError(413, f"Request body is larger than the server's limit of {self.max_body_bytes} bytes "
                        "(--max-body-bytes).", code="request_too_large")

    def _limited(self, receive, scope):
        """Count body bytes as they arrive, for bodies sent without Content-Length (chunked), and bound the
        wait for each piece of the body; once it is complete, receive() waits for a disconnect, untimed. No
        timer either where the HTTP protocol has the whole body already (trtbuild.server.limits marks the
        scope): most requests, whose body comes with their head (a timer is ~15 us of a request's CPU)."""
        seen = 0
        complete = False

        async def wrapped():
            nonlocal seen, complete
            if complete or self.body_timeout is None or scope.get("trtbuild.body_complete"):
                message = await receive()
            else:
                try:
                    if _timeout is not None:  # 3.11+: a timer on this task (wait_for wraps receive() in a new task)
                        async with _timeout(self.body_timeout):
                            message = await receive()
                    else:
                        message = await asyncio.wait_for(receive(), self.body_timeout)
                except asyncio.TimeoutError:
                    raise HTTPException(408, f"The request body stalled for {self.body_timeout:g} s "
                                             "(--header-timeout also bounds each wait for body bytes).") from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:  # FastAPI re-raises an HTTPException met while reading
                    raise HTTPException(413, self._too_large().message)
            return message

        return wrapped

    @staticmethod
    def _log(scope, record: AccessRecord, status: int, duration_s: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        line = {"ts": round(time.time(), 3), "request_id": record.request_id, "method": clip(scope.get("method") or "", 16),
                "path": clip(scope.get("path") or ""), "status": status or 499,
                "client": (scope.get("client") or ("", 0))[0], "duration_s": round(duration_s, 4)}
        if record.prompt_tokens is not None:
            line.update(prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
                        ttft_s=None if record.ttft_s is None else round(record.ttft_s, 4),
                        finish_reasons=record.finish_reasons)
        if record.error:
            line["error"] = record.error
        access_log.info(json.dumps(line))
