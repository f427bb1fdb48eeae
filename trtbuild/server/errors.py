"""Every error the server returns has OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Clients (the openai package, LangChain) read `error.message` and branch on the status code, so the
framework's own error bodies (FastAPI's 422 `detail` list, Starlette's plain-text 404) are mapped to
this shape too (vllm#12886: a changed error shape broke clients).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from trtbuild.errors import clip

log = logging.getLogger("trtbuild.server")

INVALID = "invalid_request_error"
MAX_MESSAGE = 1000  # characters: every value a message quotes is clipped already; this is the backstop


class APIError(Exception):
    """An error answered to the client with OpenAI's error body and an HTTP status."""

    def __init__(self, status: int, message: str, type: str = INVALID, param: str | None = None,
                 code: str | int | None = None, headers: dict[str, str] | None = None):
        message = clip(message, MAX_MESSAGE)
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return json_response(self.body(), self.status, self.headers)


def json_response(data, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialized once with the stdlib encoder (faster than FastAPI's jsonable_encoder).
    ASCII escapes: error messages may quote client input, lone surrogates included."""
    return Response(json.dumps(data, separators=(",", ":")), status, headers, media_type="application/json")


# --- the errors the server raises in more than one place ---------------------------------------------
def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{clip(model)}` does not exist.", param="model", code="model_not_found")


def overloaded(in_flight: int, limit: int) -> APIError:
    # 429, like TGI: the client may retry later, unlike a 503 that marks the server itself unhealthy.
    return APIError(429, f"The server is overloaded: {in_flight} sequences in flight and the limit is {limit} "
                    "(engine max batch size + --max-queue). Retry later.", type="rate_limit_error",
                    code="server_overloaded", headers={"Retry-After": "1"})


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="service_unavailable", headers={"Retry-After": "5"})


def engine_failure(message: str) -> APIError:
    return APIError(500, f"The engine failed on this request: {message}", type="server_error", code="engine_error")


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """FastAPI's list of pydantic errors -> one readable line and the offending parameter."""
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    # e.g. ["stop", "str"] in a union; a part can be a client's dict key (an unknown field's name)
    loc = [clip(str(part), 64) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return ("We could not parse the JSON body of your request: "
                f"{clip(str(first.get('ctx', {}).get('error', 'invalid JSON')))}. Send a JSON object.", None)
    param = loc[0] if loc else None
    if first.get("type") == "extra_forbidden":  # OpenAI's own wording for an unknown field
        return f"Unrecognized request argument supplied: {'.'.join(loc)}", param
    message = clip(first.get("msg", "invalid value"), 200)
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return (f"{'.'.join(loc)}: {message}{more}" if loc else f"{message}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        record = request.scope.get("trtbuild")
        if record is not None:
            record.error = exc.message
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        record = request.scope.get("trtbuild")
        if record is not None:
            record.error = message  # clipped like every message that quotes the request
        return bad_request(message, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"Unknown route {clip(request.method, 16)} {clip(request.url.path)}."
        else:
            message = str(exc.detail)
        kind = "server_error" if exc.status_code >= 500 else INVALID
        code = {413: "request_too_large", 405: "method_not_allowed", 408: "request_timeout"}.get(exc.status_code)
        return APIError(exc.status_code, message, type=kind, code=code, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, f"Internal server error: {type(exc).__name__}", type="server_error").response()
