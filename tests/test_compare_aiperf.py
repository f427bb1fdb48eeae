"""bench/compare_aiperf.py: what it feeds each tool, how it reads AIPerf's export and the server's access log,
the HF tokenizer it writes for AIPerf, and the CPU pinning of the server it starts."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from trtbuild.server.process import ServerProcess

SCRIPT = Path(__file__).parents[1] / "bench" / "compare_aiperf.py"
_spec = importlib.util.spec_from_file_location("compare_aiperf", SCRIPT)
compare_aiperf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_aiperf)


def test_load_args_ask_both_tools_for_the_same_load():
    assert compare_aiperf.load_args("concurrency=4") == (["--concurrency", "4"], ["--concurrency", "4"])
    ours, theirs = compare_aiperf.load_args("rate=2.5")
    assert ours == ["--request-rate", "2.5", "--arrival", "constant"]
    assert theirs == ["--request-rate", "2.5", "--arrival-pattern", "constant"]
    with pytest.raises(SystemExit, match="concurrency=N or rate=R"):
        compare_aiperf.load_args("qps=3")
    with pytest.raises(ValueError):
        compare_aiperf.load_args("rate=fast")


def test_turnaround_is_the_gap_after_the_latest_completion():
    ms = 1_000_000
    # two lanes: request 3 starts 4 ms after request 1 ends, request 4 starts 1 ms after request 2 ends
    starts = [0, 2 * ms, 104 * ms, 131 * ms]
    ends = [100 * ms, 130 * ms, 200 * ms, 230 * ms]
    assert compare_aiperf.turnaround_ms(starts, ends) == pytest.approx(2.5)  # median of 4 and 1
    assert compare_aiperf.turnaround_ms([0], [10]) is None


def _access_line(ts: float, duration: float, ttft: float, prompt: int = 64, completion: int = 32, status: int = 200):
    line = {"ts": ts, "request_id": "x", "method": "POST", "path": "/v1/completions", "status": status,
            "client": "127.0.0.1", "duration_s": duration, "prompt_tokens": prompt, "completion_tokens": completion,
            "ttft_s": ttft, "finish_reasons": ["length"]}
    return "INFO trtbuild.server.access " + json.dumps(line)


def test_server_view_counts_only_the_runs_full_size_requests(tmp_path):
    log = tmp_path / "serve.log"
    lines = ["serving fp16 as model 'fp16' at http://127.0.0.1:1/v1",
             _access_line(99.0, 0.5, 0.01),  # before the run
             _access_line(100.2, 0.2, 0.05),  # warm-up: the earliest arrival of the run
             _access_line(100.3, 0.01, 0.005, completion=1),  # a probe, not full size
             _access_line(101.0, 0.5, 0.010),  # measured: arrives 100.5
             _access_line(101.5, 0.5, 0.020),  # measured: arrives 101.0
             _access_line(102.0, 0.5, 0.030),  # measured: arrives 101.5
             _access_line(102.1, 0.5, 0.030, status=499),
             _access_line(150.0, 0.5, 0.01)]  # after the run
    log.write_text("\n".join(lines) + "\n")
    view = compare_aiperf.server_view(log, start=100.0, end=110.0, input_len=64, output_len=32, warmup=1)
    assert view["requests"] == 3
    assert view["ttft_p50_ms"] == pytest.approx(20.0)
    assert view["output_tokens_per_s"] == pytest.approx(3 * 32 / 1.5)  # window 100.5 -> 102.0
    assert view["decode_ms_per_token_p50"] == pytest.approx((0.5 - 0.02) / 31 * 1000)
    assert compare_aiperf.server_view(log, 200, 300, 64, 32, 0) == {"requests": 0}


def test_read_aiperf_takes_p50_ttft_throughput_and_profiling_records(tmp_path):
    ms = 1_000_000
    export = {"time_to_first_token": {"unit": "ms", "avg": 20.0, "p50": 18.5},
              "output_token_throughput": {"unit": "tokens/sec", "avg": 142.4},
              "request_count": {"unit": "requests", "avg": 3.0}}
    (tmp_path / "profile_export_aiperf.json").write_text(json.dumps(export))
    meta = [("warmup", 0, 50), ("profiling", 51, 100), ("profiling", 60, 120), ("profiling", 105, 200)]
    (tmp_path / "profile_export.jsonl").write_text("".join(
        json.dumps({"metadata": {"benchmark_phase": phase, "request_start_ns": s * ms, "request_end_ns": e * ms},
                    "metrics": {}}) + "\n" for phase, s, e in meta))
    got = compare_aiperf.read_aiperf(tmp_path)
    assert (got["ttft_p50_ms"], got["output_tokens_per_s"], got["requests"]) == (18.5, 142.4, 3)
    assert got["turnaround_p50_ms"] == pytest.approx(5.0)  # 105 after the completion at 100; warm-up ignored


def test_agreement_and_markdown_report_both_sides():
    def row(tool, ttft, tok_s, server_ttft, server_tok_s):
        return {"load": "concurrency=2", "round": 1, "tool": tool,
                "client": {"ttft_p50_ms": ttft, "output_tokens_per_s": tok_s, "turnaround_p50_ms": 1.0},
                "server": {"ttft_p50_ms": server_ttft, "output_tokens_per_s": server_tok_s,
                           "decode_ms_per_token_p50": 11.0}}
    rows = [row("trtbuild", 22.0, 150.0, 15.0, 150.0), row("aiperf", 20.0, 160.0, 15.0, 160.0)]
    (pair,) = compare_aiperf.agreement(rows)
    assert pair["client_ttft_p50_ms_diff"] == pytest.approx(0.10)
    assert pair["client_output_tokens_per_s_diff"] == pytest.approx(10 / 160)
    assert pair["server_ttft_p50_ms_diff"] == 0
    text = compare_aiperf.markdown({"engine": "e", "input_len": 64, "output_len": 32, "num_requests": 3,
                                    "server_cpus": [0], "client_cpus": [1], "rows": rows, "agreement": [pair]})
    assert "| concurrency=2 | 1 | aiperf | 20.00 | 160.0 | 1.00 | 15.00 | 160.0 | 11.00 |" in text
    assert "TTFT p50 10.0% apart, output tok/s 6.2% apart" in text


def test_hf_tokenizer_for_aiperf_encodes_like_mistral_common(engine_dirs, tokenizer, tmp_path):
    from transformers import AutoTokenizer

    home = compare_aiperf.write_hf_tokenizer(engine_dirs["fp16"], tmp_path / "hf")
    snapshot = home / "hub" / "models--local--mistral-v3" / "snapshots" / compare_aiperf.HF_REVISION
    assert (home / "hub" / "models--local--mistral-v3" / "refs" / "main").read_text() == compare_aiperf.HF_REVISION
    hf = AutoTokenizer.from_pretrained(snapshot)
    text = "The quick brown fox jumps over the lazy dog. Où est la gare ? 東京"
    assert hf(text)["input_ids"] == tokenizer.encode(text)


def test_server_process_pins_the_server_to_the_cpus_asked(engine_dirs, workspace, tmp_path):
    cpu = min(os.sched_getaffinity(0))
    server = ServerProcess(engine_dirs["fp16"], workspace.root, ["--log-level", "warning"], cpus={cpu})
    try:
        server.start()
        assert os.sched_getaffinity(server.proc.pid) == {cpu}
    finally:
        server.stop()
