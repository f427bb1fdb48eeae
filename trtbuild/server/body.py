"""The generation endpoints without FastAPI's per-request machinery: their JSON bodies read and validated as
FastAPI does it, served as plain Starlette routes and, ahead of the whole middleware stack, as a lane
(`lane`, which ServerApp in app.py dispatches to).

Why: at 256 streams of 64-token answers a server admits hundreds of requests a second, in waves (every
stream's request ends within a step or two of the others), and a slot waits for its next request to be
admitted. FastAPI's path for a body parameter (its exit stacks, telemetry hooks, dependency solving,
content-type parsing) cost ~150 us of the ~650 us a streamed completion took in-process, more than all
of ours (validation, plan, tokenizing, submit: ~100 us). The routes below sit before FastAPI's own for
the same paths, which stay for /openapi.json and never run. Errors are FastAPI's, byte for byte: the
same RequestValidationError (locations under "body"), so the same handlers answer them
(trtbuild.server.errors); tests/test_server_body.py holds both to the same answers.
"""

from __future__ import annotations

import email.message
import functools
import json
from typing import Any, Awaitable, Callable

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.responses import Response
from starlette.routing import Route


async def read_model(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body as `model`, or the RequestValidationError/HTTPException FastAPI raises
    (fastapi/routing.py, get_request_handler: JSON only under a JSON content type, which is required)."""
    try:
        raw = await _body(request.receive)
        data: Any = raw
        if raw and _is_json(request.headers.get("content-type")):
            data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except HTTPException:  # the body limits' 408/413 (ServerMiddleware)
        raise
    except Exception as exc:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return model.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=data) from None


async def _body(receive: Receive) -> bytes:
    """The whole request body: what Request.body() reads, without its async generator and closing context."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


@functools.lru_cache(maxsize=64)  # clients send one or two spellings; parsing one costs ~10 us
def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def body_route(path: str, model: type[BaseModel],
               handle: Callable[[Request, BaseModel], Awaitable[Response]]) -> Route:
    """POST `path`: read the body as `model`, then `handle(request, body)`; not in the OpenAPI schema (the
    FastAPI route for the same path describes it)."""
    async def endpoint(request: Request) -> Response:
        return await handle(request, await read_model(request, model))

    return Route(path, endpoint, methods=["POST"], name=f"{LEAN}{path}", include_in_schema=False)


LEAN = "lean:"  # the routes' name prefix (a test takes them out to compare with FastAPI's own answers)


def lane(endpoint: Callable[[Request], Awaitable[Response]], handlers: dict) -> ASGIApp:
    """`endpoint` as an ASGI app that needs no middleware below ServerMiddleware: exceptions are answered
    by `handlers` (the app's exception_handlers: class or status code -> async handler), as Starlette's
    ExceptionMiddleware and ServerErrorMiddleware would."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        started = False

        async def sender(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await (await endpoint(request))(scope, receive, sender)
        except Exception as exc:
            handler, unexpected = _handler(handlers, exc)
            if handler is None or started:  # the response is under way: the server closes the connection
                raise
            await (await handler(request, exc))(scope, receive, sender)
            if unexpected:
                raise  # answered 500, and raised on for the server's log, as ServerErrorMiddleware does

    return app


def _handler(handlers: dict, exc: Exception) -> tuple[Callable | None, bool]:
    """The handler Starlette picks, and whether it is the catch-all (500, Exception): for an HTTPException
    its status code's, else the nearest class's (starlette/_exception_handler.py, applications.py)."""
    if isinstance(exc, HTTPException) and exc.status_code != 500 and exc.status_code in handlers:
        return handlers[exc.status_code], False
    for cls in type(exc).__mro__:
        if cls is not Exception and cls in handlers:
            return handlers[cls], False
    return next((h for key, h in reversed(handlers.items()) if key in (500, Exception)), None), True
