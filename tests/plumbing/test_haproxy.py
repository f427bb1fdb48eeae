"""Three `trtbuild serve` replicas behind a real HAProxy (leastconn, health checks on /v1/health/ready),
loaded by `trtbuild bench`: one replica is SIGKILLed mid-run, restarted and rejoins; another is drained
with SIGTERM. The full scenario with its numbers (and the direct vs proxy throughput comparison) is
bench/haproxy_failover.py; this is its shorter run, asserting what must hold on any machine.

HAProxy comes from Debian (`apt-get install haproxy`; .ci/run installs it on a fresh CI machine).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parents[2] / "bench" / "haproxy_failover.py"
_spec = importlib.util.spec_from_file_location("haproxy_failover", SCRIPT)
failover = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = failover  # its dataclasses look their module up there
_spec.loader.exec_module(failover)

BASE_PORT = 18730  # proxy 18730, stats 18729, replicas 18731-18733
SECONDS, CONCURRENCY, OUTPUT_LEN = 8.0, 4, 16  # short runs: 3 replicas share 2 cores in CI
CLEAN_FAILURES = {"connection", "http_502", "stream_error"}  # a cut stream or a proxy error, never a hang


@pytest.fixture(scope="module")
def cluster(workspace, engine_dirs, tmp_path_factory):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed here and the test cannot install it: run `apt-get install -y "
                    "haproxy` (.ci/run does on CI)")
    with failover.Cluster(engine_dirs["fp16"], workspace.root, BASE_PORT, tmp_path_factory.mktemp("haproxy")) as c:
        yield c


@pytest.fixture(scope="module")
def killed(cluster):
    return failover.kill(cluster, SECONDS, CONCURRENCY, OUTPUT_LEN)


def test_a_killed_replica_is_taken_out_and_only_its_requests_fail(killed):
    run = killed["run"]
    assert run["requests"] > 0 and run["succeeded"] + run["failed"] == run["requests"]
    # every failure the bench counted is one the proxy saw end badly on the killed replica, and a clean kind
    assert run["failed"] == killed["victim_failures_in_proxy_log"]
    assert set(run["failures_by_type"]) <= CLEAN_FAILURES
    assert run["failed"] <= CONCURRENCY  # only what was in flight at the kill: a retried connect succeeds elsewhere
    assert killed["sent_to_victim_after_down"] == 0
    # DOWN after `fall` failed checks `inter` apart; +2 s: check timers and the stats poll on a loaded 2-core box
    assert killed["seconds_kill_to_down"] <= killed["health_check_bound_s"] + 2.0
    assert killed["tokens_per_s"]["2 replicas, after DOWN"] > 0  # the other two carried on


def test_the_restarted_replica_rejoins_and_a_drained_one_fails_nothing(cluster, killed):
    drained = failover.drain(cluster, SECONDS, CONCURRENCY, OUTPUT_LEN)
    assert drained["run"]["failed"] == 0 and drained["run"]["succeeded"] == drained["run"]["requests"] > 0
    assert drained["rejoined_replica1_served"] > 0
    assert drained["in_flight_on_drained_at_sigterm"] > 0  # the drain had work to finish
    assert drained["drained_replica_failed_in_proxy_log"] == 0
    assert drained["sent_to_drained_after_down"] == 0
    assert drained["exit_status"] == -15  # uvicorn re-raises SIGTERM after a clean shutdown
    # it waited the drain period before closing its listener
    assert drained["seconds_sigterm_to_exit"] >= failover.DRAIN_S - 0.2


def test_the_config_trtbuild_deploy_writes_is_valid_haproxy(capsys, workspace, tmp_path):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed: `apt-get install -y haproxy` (.ci/run does on CI)")
    from helpers import trtbuild

    code, out, err = trtbuild(capsys, workspace, "deploy", "fp16", "--replicas", "4", "--out", str(tmp_path / "d"),
                              "--engine-url", "https://models.example.com/fp16.tar")
    assert code == 0, err
    cfg = tmp_path / "d" / "haproxy.cfg"
    checked = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    text = cfg.read_text()
    assert "balance leastconn" in text and "option httpchk GET /v1/health/ready" in text
    assert [line.split()[2] for line in text.splitlines() if line.strip().startswith("server ")] == [
        "127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"]
