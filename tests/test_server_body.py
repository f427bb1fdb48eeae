"""The generation routes' own body parsing (trtbuild.server.body) answers every request as FastAPI's route
for the same path would: same status, same error body, whether it runs as a lane past the middleware stack
(ServerApp.lanes, what serves by default) or as a route behind it. All run in one process over a small
engine."""

from __future__ import annotations

import threading

import pytest
from starlette.testclient import TestClient

from trtbuild.runtime.interface import Engine, EngineInfo
from trtbuild.server import ServerSettings, create_app
from trtbuild.server.body import LEAN
from trtbuild.tokenizer import Tokenizer


class TwoWords(Engine):
    """Answers every request with the tokens of " hello world" (from a thread, as an engine does)."""

    def __init__(self):
        self.tokenizer = Tokenizer.v3()
        self.info = EngineInfo(name="two-words", variant="test", backend="test", model_id="test", max_seq_len=512,
                               max_batch_size=8, max_input_len=500, vocab_size=self.tokenizer.vocab_size,
                               eos_id=self.tokenizer.eos_id)
        self.words = self.tokenizer.encode("hello world", bos=False)

    def submit(self, prompt_ids, params, request_id=None):
        stream = self.new_stream(prompt_ids, params, request_id)

        def run():
            for token in self.words:
                if stream.emit_token(token):
                    return
            stream.finish("stop")

        threading.Thread(target=run, daemon=True).start()
        return stream


@pytest.fixture(scope="module")
def clients():
    """(lane: as served, routes: the lean routes behind the middleware stack, plain: FastAPI's own routes)"""
    engine = TwoWords()
    lane, routes, plain = (create_app(engine, ServerSettings(max_body_bytes=4096)) for _ in range(3))
    assert sorted(lane.lanes) == ["/v1/chat/completions", "/v1/completions"]
    routes.lanes = plain.lanes = {}
    plain.router.routes = [r for r in plain.router.routes if not getattr(r, "name", "").startswith(LEAN)]
    assert len(plain.router.routes) == len(lane.router.routes) - 2  # the two lean routes, nothing else
    with TestClient(lane) as a, TestClient(routes) as b, TestClient(plain) as c:
        yield a, b, c


JSON = {"Content-Type": "application/json"}
CASES = [
    ("/v1/completions", b'{"prompt": "Hi", "max_tokens": ', JSON),  # invalid JSON
    ("/v1/completions", b"", JSON),  # no body
    ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2}', {}),  # no content type: JSON is not assumed
    ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2}', {"Content-Type": "text/plain"}),
    ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2}', {"Content-Type": "application/vnd.api+json"}),
    ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2}', {"Content-Type": "application/json; charset=utf-8"}),
    ("/v1/completions", b"[1, 2]", JSON),  # not an object
    ("/v1/completions", b'"text"', JSON),
    ("/v1/completions", b'{"prompt": "Hi", "max_tokens": "4"}', JSON),  # a strict type
    ("/v1/completions", b'{"prompt": "Hi", "surprise": 1}', JSON),  # an unknown field
    ("/v1/completions", b'{"max_tokens": 2}', JSON),  # no prompt
    ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2, "model": "other"}', JSON),  # 404: another model
    ("/v1/completions", b'{"prompt": "' + b"x" * 5000 + b'"}', JSON),  # 413: over --max-body-bytes
    ("/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "Hi"}]}', JSON),
    ("/v1/chat/completions", b'{"messages": "Hi"}', JSON),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}', JSON),
]


@pytest.mark.parametrize("path,body,headers", CASES)
def test_the_lane_and_the_lean_routes_answer_as_fastapis_routes(clients, path, body, headers):
    lane, routes, plain = clients
    want = plain.post(path, content=body, headers=headers)
    assert want.status_code in (200, 400, 404, 413)
    for client in (lane, routes):
        got = client.post(path, content=body, headers=headers)
        assert got.status_code == want.status_code
        assert len(got.headers["x-request-id"]) == 32  # ServerMiddleware ran on every path
        if got.status_code == 200:
            assert got.json()["choices"][0] == want.json()["choices"][0]
        else:
            assert got.json() == want.json()


def test_the_lean_routes_are_the_ones_that_run_and_the_schema_is_fastapis(clients):
    lean, _, plain = clients
    matched = [r for r in lean.app.router.routes if getattr(r, "name", "").startswith(LEAN)]
    assert sorted(r.path for r in matched) == ["/v1/chat/completions", "/v1/completions"]
    assert lean.get("/openapi.json").json() == plain.get("/openapi.json").json()
    streamed = lean.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "stream": True})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert lean.get("/v1/completions").status_code == plain.get("/v1/completions").status_code == 405


def test_generation_posts_skip_the_middleware_stack_and_the_rest_do_not():
    app = create_app(TwoWords())
    with TestClient(app) as client:
        async def teapot(scope, receive, send):  # stands in for FastAPI's whole stack once it is built
            await send({"type": "http.response.start", "status": 418, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app.middleware_stack = teapot
        answer = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 8})
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"].strip() == "hello world"
        assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                         "stream": True}).text.endswith("data: [DONE]\n\n")
        assert client.get("/health").status_code == 418
        assert client.post("/tokenize", json={"prompt": "Hi"}).status_code == 418
    # under a root path the router, which strips it, decides: the lean routes behind the stack
    with TestClient(create_app(TwoWords()), root_path="/api") as client:
        assert client.post("/api/v1/completions", json={"prompt": "Hi", "max_tokens": 8}).json()["choices"][0][
            "text"].strip() == "hello world"


def test_a_middleware_added_by_an_embedder_sees_the_generation_requests_too():
    app = create_app(TwoWords())
    seen = []

    @app.middleware("http")
    async def tracing(request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    assert app.lanes == {}
    with TestClient(app) as client:
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 8}).status_code == 200
    assert seen == ["/v1/completions"]


class Broken(TwoWords):
    def submit(self, prompt_ids, params, request_id=None):
        raise RuntimeError("a bug in the engine adapter")


def test_an_unexpected_error_in_the_lane_is_the_apps_500_and_reaches_the_server(caplog):
    """As ServerErrorMiddleware does it: the app's 500 handler answers, then the error is raised on (uvicorn
    logs it); the lane's answer also carries the request id, and the status is counted."""
    body = {"prompt": "Hi", "max_tokens": 2}
    lane, plain = create_app(Broken()), create_app(Broken())
    plain.lanes = {}
    with TestClient(lane, raise_server_exceptions=False) as a, TestClient(plain, raise_server_exceptions=False) as b:
        got, want = a.post("/v1/completions", json=body), b.post("/v1/completions", json=body)
        assert got.status_code == want.status_code == 500
        assert got.json() == want.json() == {"error": {"message": "Internal server error: RuntimeError",
                                                       "type": "server_error", "param": None, "code": None}}
        assert len(got.headers["x-request-id"]) == 32
        assert 'trtbuild:http_responses_total{code="500"} 1.0' in a.get("/metrics").text
    with TestClient(create_app(Broken())) as client, pytest.raises(RuntimeError, match="adapter"):
        client.post("/v1/completions", json=body)
