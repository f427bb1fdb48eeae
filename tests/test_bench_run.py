"""Benchmark runs end to end: offline on the real torch engines, online over real HTTP (the no-op
nullserver with known timings, and `trtbuild serve`), the CLI, and the on-disk schema."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from trtbuild.bench import LoadSpec, SLO, WorkloadSpec, load_run, run_offline_bench, run_online_bench
from trtbuild.bench.results import SCHEMA_VERSION, RunSummary
from trtbuild.cli import main
from trtbuild.errors import TrtbuildError
from trtbuild.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args: list[str], ready_path: str = "/health", timeout: float = 120.0):
    """Start a server subprocess on a free port; yield its base URL once ready_path answers 200."""
    port = free_port()
    proc = subprocess.Popen([*args, "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"server exited: {proc.stderr.read().decode()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def nullserver(**options):
    from trtbuild.bench.nullserver import serve_in_thread

    return serve_in_thread(**options)


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out.strip().splitlines() + ["STDERR:"] + out.err.strip().splitlines()


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def test_online_known_timings_multi_token_chunks_and_failures(ws):
    # 20 ms to the first chunk, then a chunk of 2 tokens every 10 ms; every 5th request fails with HTTP 500
    with nullserver(ttft_ms=20, itl_ms=10, tokens_per_chunk=2, fail_every=5) as url:
        spec = WorkloadSpec(input_len=24, output_len=8, num_requests=20, warmup=0, seed=1)
        (result,) = run_online_bench(ws, [url], "null", spec, [LoadSpec(concurrency=2)], SLO(ttft_ms=1000),
                                     progress=False)
    s = result.summary
    assert s.counts["requests"] == 20 and s.counts["failures_by_type"] == {"http_500": 4}
    assert s.counts["succeeded"] == 16 and s.counts["flagged"] == {}  # exact lengths, prompt counts agree
    ok = [r for r in result.records if r.error_type is None]
    assert all(r.chunk_tokens == [2, 2, 2, 2] and r.output_tokens == 8 and r.token_source == "usage" for r in ok)
    assert all(r.prompt_tokens_usage == 24 for r in ok)  # the server re-encoded our text to the exact length
    lat = s.latency_ms
    # The server sleeps 20 ms, then 10 ms per chunk: those are floors. The ceilings only catch a wrong
    # chunk or unit (the last chunk comes >= 50 ms after the send): a busy CI box adds scheduling delay.
    assert lat["ttft"]["n"] == 16 and 20 <= lat["ttft"]["p50"] < lat["e2e"]["p50"] - 20
    assert 10 <= lat["itl_chunk"]["p50"] < 100
    assert lat["itl_token"]["n"] == 16 * 7  # 1 zero gap inside chunk 1, then 3 gaps x 2 tokens
    # per-token gaps are half the chunk gaps; mean ITL/token equals mean TPOT request by request
    assert lat["tpot"]["mean"] == pytest.approx(lat["itl_token"]["mean"], rel=1e-6)
    assert lat["queue"]["n"] == 0 and "queue" in s.unavailable  # server-side queue is unknown online
    assert s.slo["attainment"]["ttft"] == pytest.approx(16 / 20)  # failed requests count as misses
    assert s.target["extensions"] == {"ignore_eos": True, "continuous_usage_stats": True}
    assert result.path.parent == ws.root / "bench"  # a foreign model: the workspace's bench directory


def test_chat_known_timings_ignore_the_role_chunk(ws):
    # the role-only chunk comes at once, the first content 20 ms later, then 2 tokens every 10 ms; the
    # role chunk carries usage with 0 tokens, as vLLM sends it with continuous usage: it must not be a chunk
    with nullserver(ttft_ms=20, itl_ms=10, tokens_per_chunk=2) as url:
        spec = WorkloadSpec(input_len=24, output_len=8, num_requests=6, warmup=1, seed=1, endpoint="chat")
        (result,) = run_online_bench(ws, [url], "null", spec, [LoadSpec(concurrency=2)], progress=False)
    s = result.summary
    assert s.counts["succeeded"] == 6 and s.counts["flagged"] == {}
    assert s.workload["endpoint"] == "chat" and s.workload["temperature"] == 0.0
    assert s.token_counts["prompt"] == {"compared": 6, "differs": 0, "note": None}
    for r in result.records:
        assert r.chunk_tokens == [2, 2, 2, 2] and r.output_tokens == 8 and r.finish_reason == "length"
        assert r.input_tokens == 24 and r.prompt_tokens_usage == 24  # the templated prompt, as the server counts
        # The first byte was the role chunk, written 20 ms before the first content; a client on a busy box
        # may read both late, so only the order is certain.
        assert r.first_byte_ns < r.chunk_ns[0]
    assert 20 <= s.latency_ms["ttft"]["p50"] < s.latency_ms["e2e"]["p50"] - 20  # floors and order, as above
    assert 10 <= s.latency_ms["itl_chunk"]["p50"] < 100 and s.latency_ms["itl_token"]["n"] == 6 * 7
    assert load_run(result.path).summary == s


def test_prompt_count_mismatch_is_explained():
    from trtbuild.bench.results import RequestRecord
    from trtbuild.bench.runner import check_tokens

    records = [RequestRecord(index=i, input_tokens=20, requested_output_tokens=3, prompt_tokens_usage=p,
                             token_counts={"usage": 3}) for i, p in enumerate((20, 27, 27))]
    tokens = check_tokens(records, WorkloadSpec(endpoint="chat"))
    assert [r.flags for r in records] == [[], ["input_len_mismatch"], ["input_len_mismatch"]]
    assert tokens["prompt"]["compared"] == 3 and tokens["prompt"]["differs"] == 2
    note = tokens["prompt"]["note"]
    assert "2 request(s)" in note and "27 for 20" in note and "another chat template" in note


def test_open_loop_constant_rate_schedule_and_replicas(ws):
    with nullserver() as a, nullserver() as b:
        spec = WorkloadSpec(input_len=8, output_len=4, num_requests=12, warmup=1)
        load = LoadSpec(concurrency=None, request_rate=40.0, arrival="constant")
        (result,) = run_online_bench(ws, [a, b + "/v1"], "null", spec, [load], progress=False)
    measured = [r for r in result.records if not r.warmup]
    gaps = {measured[i + 1].scheduled_ns - measured[i].scheduled_ns for i in range(len(measured) - 1)}
    assert gaps == {25_000_000}  # exactly 1/40 s apart, as scheduled
    assert all(r.sent_ns >= r.scheduled_ns for r in measured)
    assert {r.target for r in measured} == {a, b}  # round-robin over both replicas ("/v1" suffix dropped)
    assert result.summary.client["send_lag_ms"]["n"] == 12
    assert result.summary.load == {"concurrency": None, "request_rate": 40.0, "arrival": "constant",
                                   "burstiness": 1.0, "duration_s": None, "seed": 0}


def test_cli_online_json_and_length_mismatch_fails(ws, capsys):
    with nullserver(short_by=1) as url:
        code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "--url", url, "--model", "null",
                              "--num-requests", "4", "--input-len", "16", "--output-len", "5", "--no-progress")
    assert code == 1
    assert any("output lengths other than asked" in line for line in lines)
    run_dir = Path(lines[lines.index("STDERR:") - 1])  # the last stdout line is the run's path
    result = load_run(run_dir)
    assert result.summary.counts["flagged"] == {"length_mismatch": 4}
    assert not result.valid and any("ignore_eos" in r for r in result.summary.validity["reasons"])


def test_cli_errors_are_one_line(ws, capsys):
    code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "--url", "http://127.0.0.1:9",
                          "--model", "x", "--num-requests", "1", "--no-progress")
    assert code == 1 and lines[-1].startswith("error: cannot reach http://127.0.0.1:9")
    code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "--slo", "ttft=fast")
    assert code == 1 and lines[-1].startswith("error: --slo ttft='fast' is not a number")
    code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "--concurrency", "2", "--burstiness", "0.5")
    assert code == 1 and "--arrival gamma" in lines[-1]
    code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "fp16", "--endpoint", "chat")
    assert code == 1 and lines[-2:] == ["STDERR:", "error: --endpoint chat applies to online runs only; add --url "
                                                  "URL --model NAME, or drop it to benchmark ENGINE offline"]
    code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "--url", "http://127.0.0.1:9", "--model", "x",
                          "--endpoint", "chat", "--prompt-format", "ids", "--no-progress")
    assert code == 1 and lines[-2] == "STDERR:"  # refused before contacting the server
    assert lines[-1].startswith("error: --prompt-format ids applies to --endpoint completions only")


def test_cli_chat_endpoint_from_the_environment(ws, capsys, monkeypatch):
    monkeypatch.setenv("TRTBUILD_BENCH_ENDPOINT", "chat")
    with nullserver() as url:
        code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "--url", url, "--model", "null",
                              "--num-requests", "2", "--input-len", "12", "--output-len", "3", "--no-progress")
    assert code == 0
    summary = load_run(lines[lines.index("STDERR:") - 1]).summary
    assert summary.workload["endpoint"] == "chat" and summary.counts["succeeded"] == 2


def test_cli_temperature_is_sent_and_recorded(ws, capsys, monkeypatch):
    from trtbuild.bench import online

    sent = []
    real = online.request_body
    monkeypatch.setattr(online, "request_body", lambda *a, **k: sent.append(real(*a, **k)) or sent[-1])
    with nullserver() as url:
        code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "--url", url, "--model", "null",
                              "--num-requests", "2", "--input-len", "12", "--output-len", "3", "--no-progress",
                              "--temperature", "1")
        assert code == 0
        assert load_run(lines[lines.index("STDERR:") - 1]).summary.workload["temperature"] == 1.0
        assert {b["temperature"] for b in sent[-3:]} == {1.0}  # the measured requests (the probe is greedy)
        monkeypatch.setenv("TRTBUILD_BENCH_TEMPERATURE", "0.7")
        code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "--url", url, "--model", "null",
                              "--num-requests", "1", "--input-len", "12", "--output-len", "3", "--no-progress")
        assert code == 0 and load_run(lines[lines.index("STDERR:") - 1]).summary.workload["temperature"] == 0.7
    code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "fp16", "--temperature", "-1")
    assert code != 0 and any("--temperature" in line for line in lines)


def test_summary_schema_round_trip(ws, tmp_path):
    with nullserver() as url:
        (result,) = run_online_bench(ws, [url], "null", WorkloadSpec(input_len=8, output_len=3, num_requests=3),
                                     [LoadSpec(concurrency=1)], progress=False)
    back = load_run(result.path)
    assert back.summary == result.summary
    assert back.records == result.records
    data = json.loads((result.path / "summary.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION and RunSummary.from_dict(data) == result.summary
    for key in ("run_id", "tool_version", "seed", "system", "versions", "workload", "load", "counts", "throughput",
                "latency_ms", "token_counts", "client", "validity", "target"):
        assert data[key] is not None, key
    assert data["workload"]["endpoint"] == "completions" and data["workload"]["temperature"] == 0.0
    assert WorkloadSpec.from_dict(data["workload"]) == WorkloadSpec(input_len=8, output_len=3, num_requests=3,
                                                                    endpoint="completions")
    # a summary written before the endpoint and temperature were recorded still loads, with the defaults
    old = tmp_path / "old"
    old.mkdir()
    legacy = json.loads(json.dumps(data))
    del legacy["workload"]["endpoint"], legacy["workload"]["temperature"]
    (old / "summary.json").write_text(json.dumps(legacy))
    spec = WorkloadSpec.from_dict(load_run(old).summary.workload)
    assert spec.endpoint is None and spec.temperature == 0.0 and spec.input_len == 8
    data["schema_version"] = 999
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text(json.dumps(data))
    with pytest.raises(TrtbuildError, match="schema 999"):
        load_run(bad)


@pytest.mark.slow
def test_offline_run_on_the_real_engine(workspace, engine_dirs):
    engine_dir = engine_dirs["fp16"]
    spec = WorkloadSpec(input_len=20, output_len=6, num_requests=6, warmup=1, seed=2)
    result = run_offline_bench(workspace, engine_dir, spec, LoadSpec(concurrency=3), SLO(ttft_ms=60_000),
                               progress=False)
    assert result.path.parent == workspace.bench_dir(engine_dir)
    assert (result.path / "summary.json").is_file() and (result.path / "requests.jsonl").is_file()
    s = result.summary
    assert s.mode == "offline" and s.target["manifest"]["variant"] == "fp16" and s.target["backend"] == "torch"
    assert s.counts["succeeded"] == 6 and s.counts["flagged"] == {}
    measured = [r for r in result.records if not r.warmup]
    assert all(r.output_tokens == 6 and r.token_source == "engine" and r.input_tokens == 20 for r in measured)
    assert all(r.queue_ns is not None and r.queue_ns >= 0 for r in measured)
    assert s.latency_ms["queue"]["n"] == 6 and s.latency_ms["itl_token"]["n"] == 6 * 5
    assert s.throughput["output_tokens_per_s"] == pytest.approx(36 / s.duration_s)
    assert s.token_counts["sources"] == {"engine": 6}
    assert load_run(result.path).summary == s


@pytest.mark.slow
def test_online_against_trtbuild_serve(workspace, engine_dirs):
    engine_dir = engine_dirs["fp16"]
    cmd = [sys.executable, "-m", "trtbuild.cli", "--workspace", str(workspace.root), "serve", str(engine_dir)]
    with server(cmd) as url:
        spec = WorkloadSpec(input_len=20, output_len=6, num_requests=4, warmup=1, seed=2)
        (result,) = run_online_bench(workspace, [url], engine_dir.name, spec, [LoadSpec(concurrency=2)],
                                     progress=False)
        chat = WorkloadSpec(input_len=20, output_len=6, num_requests=4, warmup=1, seed=2, endpoint="chat")
        (chat_result,) = run_online_bench(workspace, [url], engine_dir.name, chat, [LoadSpec(concurrency=2)],
                                          progress=False)
    s = result.summary
    assert s.counts["succeeded"] == 4 and s.counts["flagged"] == {}  # exact lengths and prompt counts
    assert result.path.parent == workspace.bench_dir(engine_dir)  # the served model is a workspace engine
    assert s.target["engine_dir"] == str(engine_dir)
    assert all(r.output_tokens == 6 and r.token_source == "usage" for r in result.records)
    # chat: the server's template is the client's, so usage.prompt_tokens is the exact templated length
    c = chat_result.summary
    assert c.workload["endpoint"] == "chat" and c.counts["succeeded"] == 4 and c.counts["flagged"] == {}
    assert all(r.prompt_tokens_usage == r.input_tokens == 20 for r in chat_result.records)
    assert all(r.output_tokens == 6 and r.token_source == "usage" and r.finish_reason == "length"
               for r in chat_result.records)
    assert c.token_counts["prompt"]["compared"] == 4 and c.token_counts["prompt"]["note"] is None
