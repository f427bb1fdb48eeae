"""The OpenAPI document (GET /openapi.json) describes what the server really sends.

FastAPI documents request bodies from the pydantic models, but answers it never gives (422) and none of
the ones it does: every error is OpenAI's {"error": {...}} with the statuses listed in RESPONSES, chat
and completions answer JSON or an SSE stream, /metrics is Prometheus text. The response models below
exist for the document only (render.py builds the bodies); a schema-driven fuzzer (schemathesis, see
tests/test_server_openapi.py and bench/fuzz_openapi.py) checks that server and document agree.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter

from trtbuild.server.metrics import CONTENT_TYPE as PROMETHEUS

REF = "#/components/schemas/{model}"


# --- response bodies (documentation) -------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


class Tokenized(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class Detokenized(BaseModel):
    prompt: str


class Version(BaseModel):
    version: str
    engine: str | None = None
    variant: str | None = None
    backend: str | None = None


# --- what each route answers ------------------------------------------------------------------------------
ERRORS = {
    400: "Invalid request: a bad field or value, an unknown field, bad JSON, a prompt too long for the context.",
    401: "Missing or wrong API key (when the server has one).",
    404: "Unknown model.",
    408: "The request's headers or body did not arrive within --header-timeout.",
    413: "Body larger than --max-body-bytes.",
    429: "The bounded queue is full: retry after Retry-After seconds.",
    431: "Request line and headers larger than --max-header-bytes.",
    500: "The engine failed on this request.",
    503: "Engine loading, failed, stopped, server shutting down, or past --max-connections.",
}
SSE = "A stream of `data: <chunk JSON>` events ending with `data: [DONE]` (when `stream` is true)."
ANY_ROUTE = (408, 431, 503)  # the connection layer and the engine's state can answer on every route
ROUTES: dict[tuple[str, str], tuple[type[BaseModel] | str | None, tuple[int, ...]]] = {
    ("/v1/chat/completions", "post"): (ChatCompletion, (400, 401, 404, 413, 429, 500)),
    ("/v1/completions", "post"): (Completion, (400, 401, 404, 413, 429, 500)),
    ("/v1/models", "get"): (ModelList, (401,)),
    ("/health", "get"): (Health, ()),
    ("/health", "head"): (None, ()),
    ("/metrics", "get"): ("prometheus", ()),
    ("/version", "get"): (Version, ()),
    ("/tokenize", "post"): (Tokenized, (400, 401, 404, 413)),
    ("/detokenize", "post"): (Detokenized, (400, 401, 404, 413)),
}
DEFAULT = (None, (400, 401, 404, 413, 429, 500))  # a route added without an entry here: every error
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _responses(path: str, method: str) -> dict:
    body, errors = ROUTES.get((path, method), DEFAULT)
    if body == "prometheus":
        ok = {"description": "Prometheus text exposition.", "content": {PROMETHEUS: {"schema": {"type": "string"}}}}
    elif body is None:
        ok = {"description": "OK."}
    else:
        ok = {"description": "OK.", "content": _json({"$ref": REF.format(model=body.__name__)})}
        if body in (ChatCompletion, Completion):
            ok["description"] = f"OK: JSON, or {SSE}"
            ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    out = {"200": ok}
    for status in sorted({*errors, *ANY_ROUTE}):
        error = {"description": ERRORS[status]}
        if method != "head":
            error["content"] = _json({"$ref": REF.format(model="ErrorResponse")})
        if status in (429, 503):
            error["headers"] = RETRY_AFTER
        out[str(status)] = error
    return out


def describe_api(app: FastAPI) -> None:
    """Replace app.openapi() with one that documents the real responses (call after adding routes)."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                operation["responses"] = _responses(path, method)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422: never sent
            components.pop(name, None)
        models = (ErrorResponse, ChatCompletion, Completion, ModelList, Health, Tokenized, Detokenized, Version)
        for model in models:
            model_schema = TypeAdapter(model).json_schema(ref_template=REF)
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
