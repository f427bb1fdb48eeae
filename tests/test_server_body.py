"""The generation routes' own body parsing (trtbuild.server.body) answers every request as FastAPI's route
for the same path would: same status, same error body. Both run in one process over a small engine."""

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
    engine = TwoWords()
    lean = create_app(engine, ServerSettings(max_body_bytes=4096))
    plain = create_app(engine, ServerSettings(max_body_bytes=4096))
    plain.router.routes = [r for r in plain.router.routes if not getattr(r, "name", "").startswith(LEAN)]
    assert len(plain.router.routes) == len(lean.router.routes) - 2  # the two lean routes, nothing else
    with TestClient(lean) as a, TestClient(plain) as b:
        yield a, b


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
def test_the_lean_routes_answer_as_fastapis_routes(clients, path, body, headers):
    lean, plain = clients
    a = lean.post(path, content=body, headers=headers)
    b = plain.post(path, content=body, headers=headers)
    assert a.status_code == b.status_code
    if a.status_code == 200:
        assert a.json()["choices"][0] == b.json()["choices"][0]
    else:
        assert a.json() == b.json()
        assert a.status_code in (400, 404, 413)


def test_the_lean_routes_are_the_ones_that_run_and_the_schema_is_fastapis(clients):
    lean, plain = clients
    matched = [r for r in lean.app.router.routes if getattr(r, "name", "").startswith(LEAN)]
    assert sorted(r.path for r in matched) == ["/v1/chat/completions", "/v1/completions"]
    assert lean.get("/openapi.json").json() == plain.get("/openapi.json").json()
    streamed = lean.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "stream": True})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert lean.get("/v1/completions").status_code == plain.get("/v1/completions").status_code == 405
