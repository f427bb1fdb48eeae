"""Interval math against textbook cases and scipy, the sample-size rule, trials merged and stored,
the interleaved order of trials, and the machine's state captured beside each trial."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from trtbuild.bench import LoadSpec, WorkloadSpec, load_run
from trtbuild.bench import environment, offline, stats
from trtbuild.bench.results import RequestRecord
from trtbuild.bench.runner import summarize
from trtbuild.bench.trials import interleave, merge_trials, result_intervals
from trtbuild.cli import main
from trtbuild.workspace import Workspace

MS = 1_000_000

# Student-t quantiles as printed in textbook tables (two-sided 95% column: t(0.975, df)), 3 decimals.
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 30: 2.042, 120: 1.980}


@pytest.mark.parametrize("df", sorted(T_TABLE_975))
def test_t_quantile_matches_the_printed_table_and_scipy(df):
    assert stats.t_quantile(0.975, df) == pytest.approx(T_TABLE_975[df], abs=5e-4)  # the table's rounding
    for p in (0.6, 0.9, 0.975, 0.995):  # and scipy to 1e-9 relative, at whole and fractional df
        for d in (df, df + 0.37):
            assert stats.t_quantile(p, d) == pytest.approx(scipy.stats.t.ppf(p, d), rel=1e-9)
            assert stats.t_quantile(1 - p, d) == pytest.approx(scipy.stats.t.ppf(1 - p, d), rel=1e-9)


def test_mean_interval_textbook_case():
    # n = 5: mean 12, s^2 = (4 + 0 + 1 + 1 + 4) / 4 = 2.5; 95% half-width = t(0.975, 4) s / sqrt(5)
    # = 2.776 x 1.5811 / 2.2361 = 1.963 by hand from the table
    iv = stats.mean_interval([10, 12, 11, 13, 14])
    assert iv.mean == 12 and iv.n == 5 and iv.method == "student-t"
    assert iv.std == pytest.approx(math.sqrt(2.5))
    assert iv.half_width == pytest.approx(1.963, abs=1e-3)  # the hand computation's 3 decimals
    low, high = scipy.stats.t.interval(0.95, 4, loc=12, scale=math.sqrt(2.5) / math.sqrt(5))
    assert (iv.low, iv.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert iv.cv == pytest.approx(math.sqrt(2.5) / 12)
    assert iv.text() == "12.0 +- 2.0"  # half-width to 2 significant digits, the mean to the same decimals
    assert stats.Interval(487.5, 0, 975.0).text() == "488 +- 488" and stats.Interval(0.01234, 0.0123, 0.01238).text() == \
        "0.012340 +- 0.000040"
    one = stats.mean_interval([7.0])  # one trial: a mean without an interval
    assert one.mean == 7.0 and one.half_width is None and one.method == "none"
    assert stats.Interval.from_dict(json.loads(json.dumps(iv.to_dict()))) == iv  # JSON round trip


def test_welch_difference_matches_scipy():
    a, b = [20.1, 19.8, 20.5, 20.0], [18.9, 19.6, 18.2, 19.1, 19.4, 18.8]
    d = stats.welch_difference(stats.mean_interval(a), stats.mean_interval(b))
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert d.df == pytest.approx(ref.df, rel=1e-9)
    assert (d.low, d.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert (d.low > 0) == (ref.pvalue < 0.05)  # the interval above 0 <=> a two-sided Welch test at 5%


def test_beats_and_regression_verdicts():
    fast, slow = stats.mean_interval([10.0, 10.2, 9.8]), stats.mean_interval([8.0, 8.1, 7.9])
    assert stats.beats(fast, slow)[0] == "win" and stats.beats(slow, fast)[0] == "loss"
    noisy = stats.mean_interval([9.0, 11.5, 8.0])  # mean 9.5, spread ~1.8: overlaps both
    assert stats.beats(fast, noisy)[0] == "tie"
    assert stats.beats(fast, stats.mean_interval([1.0]))[0] == "tie"  # one trial: no interval, no win
    base = stats.mean_interval([100.0, 101.0, 99.0])
    # higher is better (throughput): -1% is within a 5% tolerance, -30% beyond it, -5% +- 10% unknown
    assert stats.regression_verdict(stats.mean_interval([99.0, 100.0, 98.0]), base, 5, True)[0] == "ok"
    assert stats.regression_verdict(stats.mean_interval([70.0, 71.0, 69.0]), base, 5, True)[0] == "regression"
    assert stats.regression_verdict(stats.mean_interval([95.0, 85.0, 105.0]), base, 5, True)[0] == "inconclusive"
    verdict, change, low, high = stats.regression_verdict(stats.mean_interval([130.0, 131.0, 129.0]), base, 5, False)
    assert verdict == "regression" and change == pytest.approx(30.0) and low < 30 < high


def test_min_samples_rule():
    expected = {50: 6, 90: 36, 95: 72, 99: 368, 99.9: 3688}
    for p, n in expected.items():
        q = p / 100
        assert q ** n <= 0.025 < q ** (n - 1)  # the definition: the sample max exceeds the quantile w.p. >= 97.5%
        assert stats.min_samples(p) == n
    check = stats.sample_check({"ttft": {"n": 48, "p50": 10.0}, "e2e": {"n": 48, "p50": 1000.0}}, 3.0,
                               {"ttft": [50, 99]})
    assert not check["ok"]
    assert check["flags"][0] == "ttft p99 from 48 samples (needs >= 368)"
    assert check["flags"][1].startswith("window 3 s < 10 x E2E p50 (1 s)")
    assert stats.sample_check({"ttft": {"n": 400}}, None, {"ttft": [50, 99]}) == {"ok": True, "flags": []}


def test_bootstrap_interval_of_a_percentile_is_seeded_and_covers_it():
    values = [float(v) for v in range(1, 101)]
    a, b = stats.bootstrap_interval(values, 50, seed=1), stats.bootstrap_interval(values, 50, seed=1)
    assert a == b and a.method == "bootstrap" and a.n == 100
    assert a.low < 50.5 < a.high  # the sample median of 1..100
    assert 3 < a.half_width < 20  # SE of a median of 100 uniform values ~ 0.05 x 100 x 1.25 = 6: +-12 at 95%


def test_median_interval_is_the_order_statistics_the_binomial_gives():
    """[x_(k), x_(n+1-k)] with P(Binomial(n, 1/2) < k) <= 2.5%: the textbook table (n 6: k 1; n 10: k 2;
    n 20: k 6), checked against scipy's binomial, and no interval below 6 values."""
    for n in range(1, 60):
        got = stats.median_interval([float(v) for v in range(1, n + 1)])
        k = max([j for j in range(n + 1) if scipy.stats.binom.cdf(j - 1, n, 0.5) <= 0.025], default=0)
        assert got.n == n and got.mean == pytest.approx((n + 1) / 2)
        if n < 6:
            assert k == 0 and got.low is None and got.high is None and got.method == "none"
        else:
            assert (got.low, got.high) == (float(k), float(n + 1 - k)) and got.method == "order statistics"
    assert [stats.median_interval(range(1, n + 1)).low for n in (6, 10, 20)] == [1.0, 2.0, 6.0]


def test_median_interval_covers_the_median_of_a_skewed_distribution():
    """Coverage >= 95% without assuming a distribution: 2,000 samples of 30 exponential values (median
    ln 2). The binomial's exact coverage at n 30 is 95.7%; 2,000 draws put a 94% floor 3 SE under it."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        interval = stats.median_interval(rng.exponential(size=30))
        hits += interval.low <= math.log(2) <= interval.high
    assert hits / 2000 >= 0.94


def fake_trial(concurrency: int, tpot_ms: float, n: int = 6, out: int = 4, name: str = "e") -> object:
    records = []
    for i in range(n):
        sent = int((i // concurrency) * 10 * tpot_ms * MS)
        chunks = [sent + int((5 + k * tpot_ms) * MS) for k in range(out)]
        records.append(RequestRecord(index=i, sent_ns=sent, chunk_ns=chunks, chunk_tokens=[1] * out, end_ns=chunks[-1],
                                     input_tokens=8, requested_output_tokens=out, token_counts={"engine": out}))
    monitor = SimpleNamespace(lags_ms=[0.1], cpu_thread=0.1, cpu_process=0.2)
    return summarize("offline", WorkloadSpec(input_len=8, output_len=out, num_requests=n, warmup=0),
                     LoadSpec(concurrency=concurrency), {"kind": "engine", "name": name}, records, monitor, None)


def test_merged_trials_keep_every_trial_and_their_interval(tmp_path):
    trials = [fake_trial(2, tpot) for tpot in (10.0, 11.0, 12.0)]
    for t, trial in enumerate(trials):
        trial.summary.environment = {"busy": t == 1, "busy_reasons": ["x"] if t == 1 else [], "other_cpu_cores": t}
    merged = merge_trials(trials)
    s = merged.summary
    assert s.num_trials == 3 and [t["trial"] for t in s.trials] == [0, 1, 2]
    assert {r.trial for r in merged.records} == {0, 1, 2} and len(merged.records) == 18
    tpot = s.intervals["tpot_p50"]
    assert tpot["mean"] == pytest.approx(11.0) and tpot["method"] == "student-t" and tpot["n"] == 3
    assert tpot["high"] - tpot["mean"] == pytest.approx(4.303 * 1.0 / math.sqrt(3), abs=1e-3)  # t(.975,2) s/sqrt(n)
    assert s.latency_ms["tpot"]["n"] == 18  # latency statistics pool every trial's requests
    assert s.environment["busy_trials"] == [2] and s.environment["busy"]
    assert any("ttft p99 from 18 samples" in f for f in s.sample_check["flags"])
    ws = Workspace(tmp_path / "ws")
    from trtbuild.bench.results import save_run

    save_run(ws, tmp_path / "run", merged)
    back = load_run(tmp_path / "run")
    assert back.summary == merged.summary and back.records == merged.records  # JSON round trip


def test_summaries_without_trials_still_load_and_get_intervals(tmp_path):
    from trtbuild.bench.results import save_run

    one = merge_trials([fake_trial(1, 10.0)])
    save_run(Workspace(tmp_path / "ws"), tmp_path / "run", one)
    data = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("trials", "intervals", "sample_check", "environment"):  # written before issue 15
        del data[key]
    (tmp_path / "run" / "summary.json").write_text(json.dumps(data))
    lines = [json.loads(line) for line in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    (tmp_path / "run" / "requests.jsonl").write_text("".join(json.dumps({k: v for k, v in rec.items() if k != "trial"})
                                                             + "\n" for rec in lines))
    old = load_run(tmp_path / "run")
    assert old.summary.num_trials == 1 and old.summary.trials == [] and old.summary.intervals == {}
    iv = result_intervals(old)
    assert iv["tpot_p50"].method == "bootstrap" and iv["requests_per_s"].half_width is None


def test_trials_interleave_engines_and_levels(monkeypatch, tmp_path, tokenizer):
    calls = []

    def one_trial(engine, workload, load, slo, target, requests, label, progress):
        calls.append((target["name"], load.concurrency, label))
        return fake_trial(load.concurrency, 10.0, name=target["name"])

    monkeypatch.setattr(offline, "_one_trial", one_trial)

    def engine(name):
        info = SimpleNamespace(name=name, variant=name, backend="torch", max_input_len=64, max_seq_len=128,
                               engine_dir=str(tmp_path / name), to_dict=lambda: {})
        return SimpleNamespace(info=info, tokenizer=tokenizer)

    a, b = tmp_path / "a", tmp_path / "b"
    plan = {a: [LoadSpec(concurrency=1), LoadSpec(concurrency=4)], b: [LoadSpec(concurrency=1), LoadSpec(concurrency=4)]}
    out = offline.run_offline_interleaved(Workspace(tmp_path / "ws"), plan, WorkloadSpec(input_len=8, output_len=4,
                                          num_requests=2, warmup=0), trials=2, engines={a: engine("a"), b: engine("b")},
                                          out_dir=tmp_path / "runs", progress=False)
    assert [(n, c) for n, c, _ in calls] == [("a", 1), ("a", 4), ("b", 1), ("b", 4),  # trial 1 as given
                                             ("b", 4), ("b", 1), ("a", 4), ("a", 1)]  # trial 2 rotated
    assert calls[-1][2] == "bench a c=1 trial 2/2"
    assert [r.summary.num_trials for r in out[a] + out[b]] == [2, 2, 2, 2]
    assert [r.summary.load["concurrency"] for r in out[a]] == [1, 4]  # results in the plan's order
    assert interleave([1, 2, 3], 4) == [2, 3, 1]


def test_environment_busy_verdict_and_line():
    start = {"loadavg": [3.5, 2.0, 1.0], "cpu": {"mhz": 2445.0, "governor": None}, "gpu": None}
    end = {"loadavg": [3.9, 2.1, 1.0], "cpu": {"mhz": 2400.0, "governor": None}, "gpu": None}
    procs0 = {1: ("me", 0.0), 2: ("python", 10.0), 3: ("sshd", 1.0)}
    procs1 = {1: ("me", 5.0), 2: ("python", 18.0), 3: ("sshd", 1.0), 4: ("new", 3.0)}
    env = environment.summarize_environment(start, end, procs0, procs1, wall_s=10.0, own_pid=1)
    assert env["other_cpu_cores"] == pytest.approx(0.8)  # 8 CPU seconds of others over 10 s; own pid and new pid out
    assert env["top_processes"] == [{"pid": 2, "name": "python", "cores": 0.8}]
    assert env["busy"] and "other processes used 0.80" in env["busy_reasons"][0]
    assert environment.one_line(env).startswith("load 3.50->3.90, 2445 MHz (governor n/a), others 0.80 cores (python")
    quiet = environment.summarize_environment({"loadavg": [0.1] * 3}, {"loadavg": [0.1] * 3}, procs0, procs0, 10.0, 1)
    assert not quiet["busy"] and quiet["busy_reasons"] == []


def test_environment_snapshot_reads_this_machine():
    snap = environment.snapshot()
    assert len(snap["loadavg"]) == 3 and all(x >= 0 for x in snap["loadavg"])  # Linux CI: /proc/loadavg exists
    assert set(snap["cpu"]) == {"mhz", "min_mhz", "max_mhz", "governor"}
    times = environment.process_cpu_times()
    import os

    assert os.getpid() in times and times[os.getpid()][1] > 0  # this process has used CPU


def test_gpu_state_through_nvml(monkeypatch):
    class NVMLError(Exception):
        pass

    fake = types.ModuleType("pynvml")
    fake.NVML_CLOCK_SM, fake.NVML_CLOCK_MEM, fake.NVML_TEMPERATURE_GPU = 1, 2, 0
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    fake.nvmlDeviceGetClockInfo = lambda h, kind: {1: 1980, 2: 2619}[kind]
    fake.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1980
    fake.nvmlDeviceGetTemperature = lambda h, kind: 61
    fake.nvmlDeviceGetPowerUsage = lambda h: 512_345  # milliwatts
    fake.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000

    def unsupported(h):
        raise NVMLError("Not Supported")

    fake.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=97)
    fake.nvmlDeviceGetCurrentClocksThrottleReasons = unsupported
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    (gpu,) = environment.gpu_state()
    assert gpu == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "sm_clock_mhz": 1980, "mem_clock_mhz": 2619,
                   "max_sm_clock_mhz": 1980, "temperature_c": 61, "power_w": pytest.approx(512.345),
                   "power_limit_w": 700.0, "utilization_pct": 97, "throttle_reasons": None}

    def no_driver():
        raise NVMLError("NVML Shared Library Not Found")

    fake.nvmlInit = no_driver
    assert environment.gpu_state() is None  # no driver: recorded as absent, never an error


def test_online_trials_from_the_cli_and_environment(tmp_path, capsys, monkeypatch):
    from trtbuild.bench.nullserver import serve_in_thread

    ws = Workspace(tmp_path / "ws")
    monkeypatch.setenv("TRTBUILD_BENCH_TRIALS", "2")
    with serve_in_thread() as url:
        try:
            main(["--workspace", str(ws.root), "bench", "--url", url, "--model", "null", "--concurrency", "1,2",
                  "--num-requests", "4", "--warmup", "0", "--input-len", "8", "--output-len", "3", "--no-progress"])
        except SystemExit as exc:
            assert not exc.code
    out = capsys.readouterr().out.strip().splitlines()
    assert "concurrency 1 (2 trials, mean +- 95% CI)" in out[0]
    assert "ttft p99 from 8 samples (needs >= 368) pooled over trials" in "\n".join(out)
    run = load_run(out[-1])
    assert run.summary.num_trials == 2 and {r.trial for r in run.records} == {0, 1}
    assert run.summary.intervals["requests_per_s"]["method"] == "student-t"
    env = run.summary.trials[0]["environment"]
    assert env["start"]["loadavg"] and "other_cpu_cores" in env and isinstance(env["busy"], bool)
    runs = sorted(Path(ws.root / "bench").iterdir())
    assert len(runs) == 2  # one merged run per level, not one per trial


def test_trials_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--workspace", str(tmp_path / "ws"), "bench", "x", "--trials", "0"])
    assert exc.value.code == 2 and "--trials" in capsys.readouterr().err
