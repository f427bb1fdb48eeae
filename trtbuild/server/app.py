"""The ASGI app: OpenAI-compatible routes over any Engine (trtbuild.runtime.interface), nothing else.

    app = create_app(engine, ServerSettings(api_key="..."))          # an Engine, or
    app = create_app(lambda: load_engine(path), settings)             # a loader, run after the socket is up
    uvicorn.run(app, host="127.0.0.1", port=8000)                     # `trtbuild serve` does this

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics,
POST /tokenize, POST /detokenize, GET /tokenizer_info, GET /version, and NIM's management routes
(management.py). See serve/README.md for the behaviour clients can rely on.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from fastapi import FastAPI, Request
from starlette.responses import Response

from trtbuild import __version__
from trtbuild.runtime.interface import Engine
from trtbuild.server.body import body_route, lane
from trtbuild.server.errors import bad_request, install_error_handlers, json_response, unavailable
from trtbuild.server.generate import generate
from trtbuild.server.guards import OFFLOAD_CHARS, off_loop
from trtbuild.server.management import install_management_routes
from trtbuild.server.metrics import CONTENT_TYPE
from trtbuild.server.middleware import ServerMiddleware
from trtbuild.server.openapi import describe_api
from trtbuild.server.prompts import encode_chat, encode_text
from trtbuild.server.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from trtbuild.server.state import ServerSettings, ServerState


class ServerApp(FastAPI):
    """FastAPI, with a lane past its whole middleware stack for the two generation POSTs: the requests a
    busy server admits hundreds of a second (trtbuild.server.body). Every other request, and any under a
    root path (the router strips it), takes FastAPI's stack."""

    lanes: dict[str, Callable] = {}  # path -> ASGI app

    def add_middleware(self, middleware_class, *args, **kwargs) -> None:
        super().add_middleware(middleware_class, *args, **kwargs)
        if middleware_class is not ServerMiddleware:
            self.lanes = {}  # an embedder's middleware (CORS, tracing) must see every request

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = self.lanes.get(scope["path"])
            if route is not None:
                scope["app"] = self  # what Starlette sets: handlers find the server's state through it
                return await route(scope, receive, send)
        await super().__call__(scope, receive, send)


def create_app(engine: Engine | Callable[[], Engine], settings: ServerSettings | None = None,
               on_load_error: Callable[[Exception], None] | None = None) -> ServerApp:
    settings = settings or ServerSettings()
    state = ServerState(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading(on_load_error)
        yield
        state.close()  # in-flight requests were given shutdown_timeout to finish; the rest end "abort"

    app = ServerApp(title="trtbuild OpenAI-compatible server", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible endpoints for one engine built by trtbuild.")
    app.state.server = state
    install_error_handlers(app)
    middleware = dict(api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                      body_timeout=settings.limits.header_timeout, full=state.full,
                      on_response=state.metrics.count_response)
    app.add_middleware(ServerMiddleware, **middleware)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await generate(request, body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await generate(request, body)

    # the same two routes without FastAPI's per-request machinery (trtbuild.server.body): as lanes past the
    # middleware stack, and as routes matched first under a root path; the two above stay for /openapi.json
    lean = [body_route("/v1/chat/completions", ChatCompletionRequest, generate),
            body_route("/v1/completions", CompletionRequest, generate)]
    app.router.routes[:0] = lean
    app.lanes = {route.path: ServerMiddleware(lane(route.endpoint, app.exception_handlers), **middleware)
                 for route in lean}

    @app.get("/v1/models")
    async def models() -> Response:
        engine = state.ready()
        card = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "trtbuild",
                "root": engine.info.model_id, "max_model_len": engine.info.max_seq_len,
                "trtbuild": {"variant": engine.info.variant, "backend": engine.info.backend,
                             "precision": engine.info.precision}}
        return json_response({"object": "list", "data": [card]})

    @app.get("/health")
    async def health() -> Response:
        status, why = state.health
        if status != 200:
            return unavailable(f"Not ready: {why}.").response()
        return json_response({"status": "ok"})

    # HEAD: probes that only look at the status (uvicorn sends no body for HEAD)
    app.add_api_route("/health", health, methods=["HEAD"], operation_id="health_head")
    install_management_routes(app, state)  # NIM's /v1/health/live, /v1/health/ready, /v1/metadata, /v1/version

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/version")
    async def version() -> Response:
        data = {"version": __version__}
        if state.engine is not None:
            info = state.engine.info
            data.update(engine=info.name, variant=info.variant, backend=info.backend)
        return json_response(data)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Response:
        engine = state.ready()
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("Send exactly one of prompt or messages.", param="prompt")
        def answer() -> Response:  # tokens and their JSON: both large for a large input, so off the loop
            if body.messages is not None:
                tokens = encode_chat(engine.tokenizer, body.messages, body.tools)
            else:
                tokens = encode_text(engine.tokenizer, body.prompt, bos=body.add_special_tokens is not False)
            # built in pieces: one json.dumps of 700k ids holds the GIL ~0.4 s, stalling the loop even from a thread
            ids = ",".join([",".join(map(str, tokens[i:i + 4096])) for i in range(0, len(tokens), 4096)])
            return Response(f'{{"tokens":[{ids}],"count":{len(tokens)},"max_model_len":{engine.info.max_seq_len}}}',
                            media_type="application/json")

        return await off_loop(OFFLOAD_CHARS if body.messages is not None else len(body.prompt), answer)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> Response:  # vLLM's route; lm-evaluation-harness's "remote" tokenizer reads it
        engine = state.ready()
        tok = engine.tokenizer
        return json_response({"tokenizer_class": "mistral-common v3 (SentencePiece)",
                              "vocab_size": engine.info.vocab_size, "bos_token": tok.id_to_piece(tok.bos_id),
                              "eos_token": tok.id_to_piece(tok.eos_id), "pad_token": None,
                              "model_max_length": engine.info.max_seq_len})

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> Response:
        engine = state.ready()
        state.check_model(body.model)
        bad = [t for t in body.tokens if not 0 <= t < engine.info.vocab_size]
        if bad:
            raise bad_request(f"token {bad[0]} is outside the vocabulary [0, {engine.info.vocab_size}).",
                              param="tokens")
        return json_response({"prompt": engine.tokenizer.decode(body.tokens)})

    describe_api(app)
    return app
