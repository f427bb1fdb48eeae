"""Metric definitions on hand-made timelines (docs/benchmarks.md): every number here is worked out by hand."""

from __future__ import annotations

import pytest

from trtbuild.bench import metrics
from trtbuild.bench.metrics import SLO
from trtbuild.bench.results import RequestRecord
from trtbuild.errors import TrtbuildError

MS = 1_000_000  # ns


def rec(index=0, sent=0, chunks=(), tokens=None, out=None, error=None, warmup=False, end=None, queue=None, inp=10):
    chunk_ns = [int(c * MS) for c in chunks]
    return RequestRecord(index=index, warmup=warmup, sent_ns=int(sent * MS), scheduled_ns=int(sent * MS),
                         chunk_ns=chunk_ns, chunk_tokens=list(tokens) if tokens is not None else None,
                         end_ns=int((end if end is not None else (chunks[-1] if chunks else sent)) * MS),
                         input_tokens=inp, output_tokens=out, error_type=error,
                         queue_ns=int(queue * MS) if queue is not None else None)


def test_multi_token_chunks_split_itl_per_token_and_keep_tpot():
    # sent 0; chunk 1 @100 ms (1 token), chunk 2 @150 ms (2 tokens), chunk 3 @250 ms (1 token): 4 tokens
    m = metrics.request_metrics(rec(chunks=(100, 150, 250), tokens=(1, 2, 1), out=4))
    assert m["ttft"] == pytest.approx(0.100)
    assert m["e2e"] == pytest.approx(0.250)
    assert m["tpot"] == pytest.approx(0.150 / 3)
    assert m["itl_chunk"] == pytest.approx([0.050, 0.100])
    assert m["itl_token"] == pytest.approx([0.025, 0.025, 0.100])
    assert sum(m["itl_token"]) / len(m["itl_token"]) == pytest.approx(m["tpot"])  # mean ITL/token == TPOT
    assert m["ttst"] == pytest.approx(0.150)  # token 2 arrived with chunk 2


def test_first_chunk_with_several_tokens():
    m = metrics.request_metrics(rec(chunks=(100, 200), tokens=(2, 1), out=3))
    assert m["itl_token"] == pytest.approx([0.0, 0.100])  # token 2 came with token 1: a gap of 0
    assert m["ttst"] == pytest.approx(m["ttft"])
    assert m["tpot"] == pytest.approx(0.050)


def test_single_output_token_has_no_tpot_and_meets_a_tpot_slo():
    records = [rec(0, chunks=(80,), tokens=(1,), out=1), rec(1, chunks=(40, 60, 80), tokens=(1, 1, 1), out=3)]
    m = metrics.request_metrics(records[0])
    assert m["tpot"] is None and m["itl_chunk"] == [] and m["itl_token"] == [] and m["ttst"] is None
    out = metrics.compute(records, SLO(tpot_ms=5))
    assert out["latency_ms"]["tpot"]["n"] == 1  # the one-token request is excluded, not counted as 0
    assert out["latency_ms"]["tpot"]["mean"] == pytest.approx(20.0)
    assert out["slo"]["attainment"]["tpot"] == pytest.approx(0.5)  # undefined TPOT meets; 20 ms > 5 ms misses


def test_unknown_split_leaves_itl_per_token_unavailable():
    # 3 chunks but 5 tokens and no per-chunk counts: nothing says how the tokens were split
    m = metrics.request_metrics(rec(chunks=(10, 20, 30), tokens=None, out=5))
    assert m["itl_token"] is None and m["ttst"] is None
    assert m["itl_chunk"] == pytest.approx([0.010, 0.010])
    # one chunk per token is recognised without per-chunk counts
    m = metrics.request_metrics(rec(chunks=(10, 20, 30), tokens=None, out=3))
    assert m["itl_token"] == pytest.approx([0.010, 0.010])
    out = metrics.compute([rec(chunks=(10, 20, 30), tokens=None, out=5)])
    assert "itl_token" in out["unavailable"] and "queue" in out["unavailable"]


def test_failed_and_warmup_requests_stay_out_of_latency_statistics():
    records = [
        rec(0, sent=0, chunks=(5000,), tokens=(1,), out=1, warmup=True),  # a slow warm-up: must not count
        rec(1, sent=0, chunks=(100, 200), tokens=(1, 1), out=2, queue=3),
        rec(2, sent=0, chunks=(300, 400), tokens=(1, 1), out=2, queue=5),
        rec(3, sent=0, error="http_500", end=50),
        rec(4, sent=0, error="timeout", end=1000),
        rec(5, sent=0, error="http_500", end=60),
    ]
    out = metrics.compute(records, SLO(ttft_ms=1000))
    counts = out["counts"]
    assert counts == {"requests": 5, "succeeded": 2, "failed": 3, "failures_by_type": {"http_500": 2, "timeout": 1},
                      "warmup": 1, "flagged": {}}
    assert out["latency_ms"]["ttft"]["n"] == 2
    assert out["latency_ms"]["ttft"]["mean"] == pytest.approx(200.0)
    assert out["latency_ms"]["queue"]["mean"] == pytest.approx(4.0)
    # window: first measured send (0) to the last measured event (the timeout at 1000 ms)
    assert out["duration_s"] == pytest.approx(1.0)
    assert out["throughput"]["requests_per_s"] == pytest.approx(2.0)
    assert out["throughput"]["output_tokens_per_s"] == pytest.approx(4.0)
    assert out["throughput"]["input_tokens_per_s"] == pytest.approx(20.0)
    assert out["throughput"]["total_tokens_per_s"] == pytest.approx(24.0)
    # failures count as misses: 2 of 5 measured requests met the TTFT target
    assert out["slo"]["attainment"]["ttft"] == pytest.approx(0.4)
    assert out["slo"]["goodput_rps"] == pytest.approx(2.0)


def test_throughput_per_user_and_peak_buckets():
    # two requests over 3 s; tokens arrive at known times
    a = rec(0, sent=0, chunks=(100, 600, 1100, 1600), tokens=(1, 1, 1, 1), out=4)  # 4 tok / 1.6 s
    b = rec(1, sent=0, chunks=(200, 300, 400, 2900), tokens=(1, 1, 1, 1), out=4)  # 4 tok / 2.9 s
    out = metrics.compute([a, b])
    tp = out["throughput"]
    assert out["duration_s"] == pytest.approx(2.9)
    assert tp["output_tokens_per_s_per_user"] == pytest.approx((4 / 1.6 + 4 / 2.9) / 2)
    # full 1 s buckets [0,1) and [1,2): 5 tokens then 2; the partial [2,2.9) bucket is not used
    assert tp["peak_output_tokens_per_s"] == pytest.approx(5.0)
    assert tp["output_tokens_per_s_per_gpu"] is None


def test_goodput_needs_every_slo():
    fast = rec(0, chunks=(50, 60, 70), tokens=(1, 1, 1), out=3)  # ttft 50, tpot 10, e2e 70
    slow_first = rec(1, chunks=(500, 510, 520), tokens=(1, 1, 1), out=3)  # ttft 500
    slow_decode = rec(2, chunks=(50, 250, 450), tokens=(1, 1, 1), out=3, end=1000)  # tpot 200
    out = metrics.compute([fast, slow_first, slow_decode], SLO(ttft_ms=100, tpot_ms=50, e2e_ms=600))
    slo = out["slo"]
    assert slo["attainment"] == pytest.approx({"ttft": 2 / 3, "tpot": 2 / 3, "e2e": 1.0})
    assert slo["good_requests"] == 1
    assert slo["goodput_rps"] == pytest.approx(1 / 1.0)


def test_stats_linear_interpolation():
    s = metrics.stats([4, 1, 3, 2])
    assert s["n"] == 4 and s["min"] == 1 and s["max"] == 4 and s["mean"] == 2.5
    assert s["p50"] == pytest.approx(2.5)  # between ranks 2 and 3
    assert s["p90"] == pytest.approx(3.7)  # 1 + 0.9 * 3 = rank 3.7 -> 3 + 0.7
    assert s["p99.9"] == pytest.approx(3.997)
    assert s["std"] == pytest.approx(1.118033988)  # population std
    assert metrics.stats([])["n"] == 0 and metrics.stats([])["p50"] is None


def test_itl_by_position():
    records = [rec(0, chunks=(10, 20, 40), tokens=(1, 1, 1), out=3), rec(1, chunks=(10, 30, 70), tokens=(1, 1, 1), out=3)]
    pos, mean, p90 = metrics.itl_by_position(records)
    assert list(pos) == [2, 3]
    assert list(mean) == pytest.approx([15.0, 30.0])


def test_slo_parsing():
    slo = SLO.parse("ttft=200, tpot=50,e2e=2000")
    assert slo.targets() == {"ttft": 200.0, "tpot": 50.0, "e2e": 2000.0}
    assert SLO.from_dict(slo.to_dict()) == slo
    assert SLO.parse(None) is None
    for bad in ("ttft", "itl=5", "ttft=abc", "tpot=-1"):
        with pytest.raises(TrtbuildError):
            SLO.parse(bad)
