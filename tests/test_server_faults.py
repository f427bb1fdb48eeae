"""Server behaviour around engine faults, in-process on the real fp16 engine of the embedded model:
/health while the engine loads or after it failed, an engine that died, and a request that fails
mid-stream (the fault is injected by finishing the real stream with "error" after its first token); and
the serve command's own errors (unknown engine, busy port, an engine that fails to load)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from server_helpers import sse_data
from starlette.testclient import TestClient

from trtbuild.errors import TrtbuildError
from trtbuild.runtime.interface import Engine
from trtbuild.server import ServerSettings, create_app

BODY = {"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def load(engine_dirs):
    from trtbuild.runtime import load_engine

    return lambda: load_engine(engine_dirs["fp16"])


@pytest.fixture(scope="module")
def engine(load):
    engine = load()
    yield engine
    engine.close()


class FailsAfterFirstToken(Engine):
    """The real engine, except that every request fails right after its first token, as a GPU fault would."""

    def __init__(self, inner: Engine):
        self.inner, self.info, self.tokenizer = inner, inner.info, inner.tokenizer

    def submit(self, prompt_ids, params, request_id=None):
        stream = self.inner.submit(prompt_ids, params, request_id)

        def fail():
            next(iter(stream))
            stream.finish("error", error="injected fault: device lost")

        threading.Thread(target=fail, daemon=True).start()
        return stream

    @property
    def num_running(self):
        return self.inner.num_running


def test_error_mid_stream_is_an_error_event_then_done(engine):
    with TestClient(create_app(FailsAfterFirstToken(engine))) as client:
        streamed = sse_data(client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Hi"}], "stream": True, **{k: v for k, v in BODY.items() if k != "prompt"}}).text)
        assert streamed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert streamed[-1] == "[DONE]"
        assert streamed[-2]["error"]["code"] == "engine_error" and "device lost" in streamed[-2]["error"]["message"]
        assert not any(e["choices"][0]["finish_reason"] for e in streamed[:-2] if isinstance(e, dict) and e.get("choices"))
        whole = client.post("/v1/completions", json=BODY)
        assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
        assert client.app.state.server.admitted == 0


def test_health_is_503_while_loading_then_200(load):
    gate = threading.Event()

    def slow_load():
        gate.wait(60)
        return load()

    with TestClient(create_app(slow_load)) as client:  # the lifespan starts loading in a thread
        health = client.get("/health")
        assert health.status_code == 503 and "loading" in health.json()["error"]["message"]
        assert client.post("/v1/completions", json=BODY).status_code == 503
        gate.set()
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json() == {"status": "ok"}
        assert client.post("/v1/completions", json={**BODY, "max_tokens": 3}).json()["usage"]["completion_tokens"] == 3


def test_load_failure_is_503_and_reported():
    failures = []

    def broken():
        raise TrtbuildError("engine fp16-x needs tensorrt_llm; install it on a GPU host")

    with TestClient(create_app(broken, on_load_error=failures.append)) as client:
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        health = client.get("/health")
        assert health.status_code == 503 and "failed to load: engine fp16-x needs" in health.json()["error"]["message"]
        assert client.get("/v1/models").status_code == 503
    assert len(failures) == 1


def test_dead_engine_answers_503(load):
    dead = load()
    dead.close()  # the engine loop is gone: submit raises EngineError
    with TestClient(create_app(dead, ServerSettings(served_model_name="m"))) as client:
        r = client.post("/v1/completions", json=BODY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
        health = client.get("/health")
        assert health.status_code == 503 and "engine stopped" in health.json()["error"]["message"]


# --- `trtbuild serve` errors: one line on stderr, exit status 1, no traceback ----------------------------
def serve(workspace, *args, timeout=120):
    cmd = [sys.executable, "-m", "trtbuild.cli", "--workspace", str(workspace.root), "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_serve_unknown_engine_and_busy_port(workspace, engine_dirs):
    missing = serve(workspace, "no-such-engine")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no engine 'no-such-engine'")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = serve(workspace, str(engine_dirs["fp16"]), "--port", str(busy.getsockname()[1]))
    assert taken.returncode == 1 and "error: cannot listen on 127.0.0.1:" in taken.stderr
    assert "Traceback" not in missing.stderr + taken.stderr


def test_serve_exits_when_the_engine_fails_to_load(workspace, engine_dirs, tmp_path):
    broken = tmp_path / "fp16-broken"
    broken.mkdir()
    shutil.copy(engine_dirs["fp16"] / "manifest.json", broken)  # the manifest, without the weights it lists
    result = serve(workspace, str(broken), "--port", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "serving fp16-broken" in result.stdout  # the socket was up while the engine loaded
