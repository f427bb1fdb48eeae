"""`trtbuild bench --client-workers`: a load level split over client processes, their records merged, each
worker judged on its own (trtbuild/bench/workers.py)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from test_bench_run import nullserver, run_cli, server

from trtbuild.bench import LoadSpec, WorkloadSpec, load_run, run_online_bench
from trtbuild.bench.arrivals import schedule
from trtbuild.bench.results import RequestRecord
from trtbuild.bench.runner import PooledMonitor, client_health
from trtbuild.bench.workers import auto_workers, merge, parse_workers, split
from trtbuild.bench.workload import BenchRequest
from trtbuild.errors import TrtbuildError
from trtbuild.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def requests(measured: int, warm: int) -> list[BenchRequest]:
    return ([BenchRequest(i, [1, 2], "a", 4, warmup=True) for i in range(warm)] +
            [BenchRequest(warm + i, [1, 2], "a", 4) for i in range(measured)])


def test_a_level_splits_into_disjoint_shares_that_add_up():
    reqs = requests(measured=20, warm=4)
    shares = split(reqs, LoadSpec(concurrency=10), 3)
    assert [s[0].concurrency for s in shares] == [4, 3, 3]  # together the level's concurrency
    got = sorted(r.index for _, share, _ in shares for r in share)
    assert got == list(range(24))  # every request exactly once, warm-ups included
    assert all(share[0].warmup for _, share, _ in shares)  # each share warms up first
    # more workers than streams: the extra ones get nothing
    shares = split(reqs, LoadSpec(concurrency=2), 4)
    assert [len(share) for _, share, _ in shares][2:] == [0, 0]
    # open loop: the parent's seeded schedule, dealt out; every worker keeps the whole load for its checks
    load = LoadSpec(concurrency=None, request_rate=50, seed=3)
    shares = split(reqs, load, 2)
    offsets = sorted(o for _, _, offs in shares for o in offs)
    assert offsets == pytest.approx(sorted(float(x) for x in schedule(20, load)))
    assert all(s[0] is load for s in shares)


def test_records_merge_and_each_worker_is_judged_on_its_own():
    def rec(index, sent, warmup=False):
        return RequestRecord(index=index, warmup=warmup, scheduled_ns=sent, sent_ns=sent, chunk_ns=[sent + 10**6],
                             end_ns=sent + 2 * 10**6)

    quiet = SimpleNamespace(lags_ms=[0.1] * 100, cpu_thread=0.2, cpu_process=0.25)
    lagging = SimpleNamespace(lags_ms=[0.1] * 90 + [30.0] * 10, cpu_thread=0.3, cpu_process=0.35)
    parts = [([rec(0, 0, True), rec(2, 300)], quiet, {0: "x", 2: "y"}),
             ([rec(1, 100), rec(3, 200)], lagging, {1: "z", 3: "w"})]
    records, texts, per_worker = merge(parts)
    assert [r.index for r in records] == [0, 1, 3, 2]  # warm-up first, then by scheduled time
    assert texts == {0: "x", 1: "z", 2: "y", 3: "w"}
    pooled = PooledMonitor([m for _, m in per_worker])
    assert len(pooled.lags_ms) == 200 and pooled.cpu_thread == 0.3 and pooled.cpu_process == pytest.approx(0.6)
    health = client_health(records, LoadSpec(concurrency=4), pooled, "online", {"ttft": {"p50": 1.0}}, per_worker)
    assert health["bottleneck"] and len(health["reasons"]) == 1
    assert health["reasons"][0].startswith("client worker 2/2: event-loop lag p99 30.0 ms")
    assert [w["requests"] for w in health["workers"]] == [2, 2] and health["workers"][0]["reasons"] == []


def test_auto_and_bad_worker_counts(monkeypatch):
    assert parse_workers("auto") is None and parse_workers(None) is None and parse_workers(" 3 ") == 3
    for bad in ("0", "-1", "two", "1.5", "65"):
        with pytest.raises(TrtbuildError, match="--client-workers must be auto or a whole number"):
            parse_workers(bad)
    monkeypatch.setattr("trtbuild.bench.workers.usable_cpus", lambda: 4)
    assert auto_workers([LoadSpec(concurrency=64)]) == 1
    assert auto_workers([LoadSpec(concurrency=1), LoadSpec(concurrency=256)]) == 2
    assert auto_workers([LoadSpec(concurrency=4096)]) == 4  # at most one per usable CPU
    assert auto_workers([LoadSpec(concurrency=None, request_rate=100)]) == 1


def test_cli_refuses_bad_client_workers_in_one_line(ws, capsys, monkeypatch):
    base = ["--workspace", str(ws.root), "bench", "--url", "http://127.0.0.1:9", "--model", "x", "--no-progress"]
    code, lines = run_cli(capsys, *base, "--client-workers", "zero")
    assert code == 1 and lines[-2:] == ["STDERR:", "error: --client-workers must be auto or a whole number from 1 "
                                                   "to 64, got 'zero'"]
    monkeypatch.setenv("TRTBUILD_BENCH_CLIENT_WORKERS", "0")
    code, lines = run_cli(capsys, *base)
    assert code == 1 and lines[-1] == "error: --client-workers must be auto or a whole number from 1 to 64, got 0"
    monkeypatch.delenv("TRTBUILD_BENCH_CLIENT_WORKERS")
    code, lines = run_cli(capsys, "--workspace", str(ws.root), "bench", "fp16", "--client-workers", "2")
    assert code == 1 and lines[-1].startswith("error: --client-workers applies to online runs only")


def test_two_workers_keep_known_timings_on_one_clock(ws):
    # 20 ms to the first chunk, then a 2-token chunk every 10 ms: stamps from two processes, one origin
    with nullserver(ttft_ms=20, itl_ms=10, tokens_per_chunk=2) as url:
        spec = WorkloadSpec(input_len=16, output_len=8, num_requests=12, warmup=2, seed=1)
        (result,) = run_online_bench(ws, [url], "null", spec, [LoadSpec(concurrency=4)], progress=False,
                                     client_workers=2)
    s = result.summary
    assert s.target["client_workers"] == 2 and len(s.client["workers"]) == 2
    assert s.counts["succeeded"] == 12 and s.counts["warmup"] == 2 and s.counts["flagged"] == {}
    assert sorted(r.index for r in result.records) == list(range(14))
    lat = s.latency_ms
    assert 20 <= lat["ttft"]["p50"] < lat["e2e"]["p50"] - 20 and 10 <= lat["itl_chunk"]["p50"] < 100
    assert lat["itl_token"]["n"] == 12 * 7
    measured = [r for r in result.records if not r.warmup]
    warm_end = max(r.end_ns for r in result.records if r.warmup)
    assert min(r.sent_ns for r in measured) >= warm_end  # the barrier: measured sends after every warm-up
    assert s.duration_s < 5  # one origin: a skewed clock would stretch the window across processes
    assert load_run(result.path).summary == s  # the JSON round trip is unchanged


@pytest.mark.slow
def test_multi_worker_run_against_trtbuild_serve_counts_like_one_worker(workspace, engine_dirs):
    engine_dir = engine_dirs["fp16"]
    cmd = [sys.executable, "-m", "trtbuild.cli", "--workspace", str(workspace.root), "serve", str(engine_dir)]
    spec = WorkloadSpec(input_len=20, output_len=6, num_requests=8, warmup=2, seed=2)
    results = {}
    with server(cmd) as url:
        for n in (1, 2):
            (results[n],) = run_online_bench(workspace, [url], engine_dir.name, spec, [LoadSpec(concurrency=4)],
                                             progress=False, client_workers=n)
    one, two = results[1].summary, results[2].summary
    assert one.target["client_workers"] == 1 and two.target["client_workers"] == 2
    for s in (one, two):
        assert s.counts["succeeded"] == 8 and s.counts["warmup"] == 2 and s.counts["flagged"] == {}
    assert one.throughput["output_tokens"] == two.throughput["output_tokens"] == 8 * 6
    assert one.throughput["input_tokens"] == two.throughput["input_tokens"]
    assert one.token_counts["sources"] == two.token_counts["sources"] == {"usage": 8}
    assert one.latency_ms["itl_token"]["n"] == two.latency_ms["itl_token"]["n"] == 8 * 5
    assert sorted(r.index for r in results[2].records) == sorted(r.index for r in results[1].records)
    assert load_run(results[2].path).records == results[2].records
