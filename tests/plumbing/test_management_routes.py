"""NIM's management routes (/v1/health/live, /v1/health/ready, /v1/metadata, /v1/version) over real HTTP.

Two servers: `trtbuild serve` in a subprocess (API key, drain period) for what users and probes see, and the
same app under uvicorn in a thread with a loader that waits for the test, to see "not loaded yet" and
"engine died" deterministically.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest
import uvicorn

from trtbuild import __version__
from trtbuild.manifest import load_manifest
from trtbuild.server import ServerSettings, create_app
from trtbuild.server.process import ServerProcess

pytestmark = pytest.mark.slow
KEY = "mgmt-key"
DRAIN_S = 3.0  # long enough to send requests during the drain on a busy 2-core box


@pytest.fixture(scope="module")
def served(workspace, engine_dirs, tmp_path_factory):
    log = tmp_path_factory.mktemp("mgmt") / "serve.log"
    server = ServerProcess(engine_dirs["fp16"], workspace.root, ["--api-key", KEY, "--drain-seconds", str(DRAIN_S)],
                           log_path=log)
    with server:
        yield server


def test_probes_and_version_need_no_key(served):
    live = httpx.get(f"{served.url}/v1/health/live")
    ready = httpx.get(f"{served.url}/v1/health/ready")
    assert (live.status_code, ready.status_code) == (200, 200)
    assert live.json() == {"object": "health.response", "message": "Service is live.", "status": "live"}
    assert ready.json() == {"object": "health.response", "message": "Service is ready.", "status": "ready"}
    assert httpx.get(f"{served.url}/v1/version").json() == {"release": __version__, "api": "v1"}
    assert httpx.get(f"{served.url}/health").status_code == 200  # kept


def test_metadata_comes_from_the_manifest_and_needs_the_key(served, engine_dirs):
    assert httpx.get(f"{served.url}/v1/metadata").status_code == 401
    data = httpx.get(f"{served.url}/v1/metadata", headers={"Authorization": f"Bearer {KEY}"}).json()
    manifest = load_manifest(engine_dirs["fp16"])
    engine = data["trtbuild"]
    assert data["selectedModelProfileId"] == engine["key"] == manifest.key
    assert data["modelInfo"] == [{"shortName": served.model, "modelUrl": manifest.source["model_id"]}]
    assert (engine["variant"], engine["backend"], engine["precision"]) == ("fp16", "torch", manifest.precision)
    assert manifest.precision.items() <= engine["runtime"].items()  # plus how it runs here (device, ...)
    assert engine["build"] == manifest.build and engine["versions"] == manifest.versions
    assert data["version"] == __version__


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def test_ready_is_503_until_loaded_and_after_the_engine_dies(engine_dirs):
    from trtbuild.runtime import load_engine

    release, loaded = threading.Event(), []

    def loader():
        release.wait(60)
        loaded.append(load_engine(engine_dirs["fp16"]))
        return loaded[0]

    app = create_app(loader, ServerSettings())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    sock = _free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/v1/health/live").status_code == 200  # the process runs: live
        not_ready = httpx.get(f"{url}/v1/health/ready")
        assert not_ready.status_code == 503
        assert "loading the engine" in not_ready.json()["error"]["message"]
        assert httpx.get(f"{url}/v1/metadata").status_code == 503
        release.set()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{url}/v1/health/ready").status_code == 200
        loaded[0].close()  # the engine stops under the server: the next request finds out
        body = {"prompt": "Hi", "max_tokens": 2}
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 503
        dead = httpx.get(f"{url}/v1/health/ready")
        assert dead.status_code == 503 and "engine stopped" in dead.json()["error"]["message"]
        assert httpx.get(f"{url}/v1/health/live").status_code == 200  # still alive: the orchestrator decides
    finally:
        server.should_exit = True
        release.set()
        thread.join(30)


def test_sigterm_drains_then_exits(served):
    """Last in the module: it stops the server. During the drain, readiness is 503 and requests still work."""
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": served.model, "prompt": "Once upon a time", "max_tokens": 8, "ignore_eos": True}
    served.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    time.sleep(0.3)  # uvicorn looks at the signal flag every 0.1 s
    ready = httpx.get(f"{served.url}/v1/health/ready")
    assert ready.status_code == 503 and "draining" in ready.json()["error"]["message"]
    assert httpx.get(f"{served.url}/v1/health/live").status_code == 200
    done = httpx.post(f"{served.url}/v1/completions", json=body, headers=headers, timeout=30)
    assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 8
    assert time.monotonic() - t0 < DRAIN_S, "the request above did not run inside the drain period"
    code = served.proc.wait(DRAIN_S + 30)  # drain, then the normal graceful shutdown
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert time.monotonic() - t0 >= DRAIN_S - 0.2  # it did wait the drain period (0.2 s: tick granularity)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.url}/v1/health/live", timeout=2)


def test_a_second_signal_skips_the_drain(workspace, engine_dirs):
    server = ServerProcess(engine_dirs["fp16"], workspace.root, ["--drain-seconds", "60"])
    with server:
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/v1/health/ready").status_code == 503
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)  # far less than the 60 s drain: the second signal shut it down
        except subprocess.TimeoutExpired:
            pytest.fail("a second SIGTERM did not end the drain")
