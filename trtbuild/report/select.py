"""Which engine to ship, and did anything get slower: decisions that noise cannot flip.

Selection: among engines whose validation verdict is "pass", each competes with its goodput
(requests/s meeting every SLO; without SLOs, successful requests/s) at its best load level, as a mean
over trials with a 95% Student-t interval. An engine another beats beyond noise (Welch's 95% interval
of the difference above 0) is out; if one engine is left it wins, else it is a "tie within noise",
broken by accuracy (validation), then by memory. Every other engine gets the reason it lost, and the
decision carries its evidence in one line. Runs the client marked invalid never count.
Regression: each metric's change against the baseline, with the Welch interval of the change
(trtbuild/bench/stats.py): regression / ok / inconclusive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trtbuild.bench import stats
from trtbuild.bench.metrics import SLO
from trtbuild.bench.results import BenchResult, find_runs, load_run
from trtbuild.bench.trials import TRIAL_METRICS, result_intervals, trial_goodputs
from trtbuild.errors import TrtbuildError
from trtbuild.workspace import Workspace

def collect(ws: Workspace, inputs: list[str | Path]) -> list[BenchResult]:
    """Runs from run directories, summary.json files, directories of runs, or engine specs (all their runs)."""
    runs: list[BenchResult] = []
    for spec in inputs:
        path = Path(spec).expanduser()
        if (path / "summary.json").is_file() or path.name == "summary.json":
            runs.append(load_run(path))
            continue
        if path.is_dir() and find_runs(path):
            runs += [load_run(p) for p in find_runs(path)]
            continue
        engine = ws.resolve_engine(spec)  # raises a one-line error for an unknown spec
        found = find_runs(ws.bench_dir(engine))
        if not found:
            raise TrtbuildError(f"engine {engine.name} has no benchmark runs; run `trtbuild bench {spec}` first")
        runs += [load_run(p) for p in found]
    if not runs:
        raise TrtbuildError("nothing to report: pass benchmark run directories or engines with runs")
    return runs


def load_validation(engine_dir: str | None) -> dict | None:
    """<engine>/validation.json as {"verdict": ..., "metrics": {...}, "failures": [...]}, read as plain JSON."""
    if not engine_dir:
        return None
    path = Path(engine_dir) / "validation.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"verdict": "unreadable", "metrics": {}, "failures": [f"{path} is not valid JSON"]}
    verdict = data.get("verdict") or ("pass" if data.get("passed") else "fail")
    return {"verdict": verdict, "metrics": data.get("metrics") or {}, "failures": data.get("failures") or []}


def goodput(result: BenchResult, slo: SLO | None) -> float:
    """Requests/s that met every SLO (recomputed from the per-request records for this SLO), mean over trials."""
    values = trial_goodputs(result, slo)
    return sum(values) / len(values) if values else 0.0


def goodput_interval(result: BenchResult, slo: SLO | None) -> stats.Interval:
    """Mean goodput over the run's trials with its 95% Student-t interval (none for one trial)."""
    return stats.mean_interval(trial_goodputs(result, slo))


@dataclass
class EngineEntry:
    name: str
    engine_dir: str | None
    runs: list[BenchResult]
    validation: dict | None
    best_goodput: float = 0.0
    best_run: BenchResult | None = None
    best_output_tps: float = 0.0
    best_interval: stats.Interval | None = None  # goodput at the best level: mean and 95% interval
    levels: list = field(default_factory=list)  # (run, goodput interval) of every valid run

    @property
    def verdict(self) -> str:
        return (self.validation or {}).get("verdict") or "not validated"


@dataclass
class Selection:
    engine: str | None
    reason: str  # the decision's evidence, one line
    losers: dict[str, str] = field(default_factory=dict)
    entries: list[EngineEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    decision: str = "none"  # win | tie within noise | only candidate | none


def group(runs: list[BenchResult]) -> list[EngineEntry]:
    entries: dict[str, EngineEntry] = {}
    for run in runs:
        name = run.summary.engine_name
        if name not in entries:
            engine_dir = run.summary.target.get("engine_dir")
            entries[name] = EngineEntry(name, engine_dir, [], load_validation(engine_dir))
        entries[name].runs.append(run)
    return list(entries.values())


# Accuracy for breaking ties, from validation.json: (metric, higher is better, label), first one all have.
ACCURACY_KEYS = [("mean_kl", False, "mean KL vs reference"), ("top1", True, "top-1 agreement"),
                 ("token_agreement", True, "greedy token agreement")]


def weight_bytes(engine_dir: str | None) -> int | None:
    """Memory for breaking ties: bytes of the engine's weight files (safetensors or TensorRT engines)."""
    if not engine_dir or not Path(engine_dir).is_dir():
        return None
    files = [p for p in Path(engine_dir).rglob("*") if p.suffix in (".safetensors", ".engine") and p.is_file()]
    return sum(p.stat().st_size for p in files) or None


def _g(iv: stats.Interval) -> str:
    return iv.text() + ("" if iv.half_width is not None else " (1 trial: no interval)")


def _diff(d: stats.Difference) -> str:
    if not d.known:
        return f"difference {d.diff:+.3g}, no interval: {d.method}"
    return f"Welch 95% CI of the difference [{d.low:+.3g}, {d.high:+.3g}]"


def break_tie(tied: list[EngineEntry]) -> tuple[EngineEntry, str]:
    """Among engines whose goodput is within noise: the most accurate (validation), then the smallest
    (weight bytes), then the highest mean goodput. Returns (winner, how it was broken)."""
    for key, higher, label in ACCURACY_KEYS:
        values = [((e.validation or {}).get("metrics") or {}).get(key) for e in tied]
        if all(isinstance(v, (int, float)) for v in values) and len(set(values)) > 1:
            best = (max if higher else min)(range(len(tied)), key=lambda i: values[i])
            shown = ", ".join(f"{e.name} {v:.4g}" for e, v in zip(tied, values))
            return tied[best], f"broken by accuracy, {label}: {shown}"
    sizes = [weight_bytes(e.engine_dir) for e in tied]
    if all(sizes) and len(set(sizes)) > 1:
        best = min(range(len(tied)), key=lambda i: sizes[i])
        shown = ", ".join(f"{e.name} {b / 2**20:.3g} MiB" for e, b in zip(tied, sizes))
        return tied[best], f"accuracy equal; broken by memory, weight bytes: {shown}"
    best = max(tied, key=lambda e: (e.best_goodput, e.best_output_tps))
    return best, "accuracy and memory equal or unknown; broken by the higher mean goodput"


def engine_beats(a: EngineEntry, b: EngineEntry) -> tuple[BenchResult, stats.Interval, stats.Difference] | None:
    """A beats B beyond noise when one of A's load levels beats every level of B beyond noise (Welch 95%):
    then A's best goodput exceeds B's best. Returns (A's run, its interval, the difference to B's best
    level) for A's strongest such level, or None."""
    winning = [(run, iv) for run, iv in a.levels
               if all(stats.beats(iv, other)[0] == "win" for _, other in b.levels)]
    if not winning:
        return None
    run, iv = max(winning, key=lambda x: x[1].mean)
    return run, iv, stats.welch_difference(iv, b.best_interval)


def select_engine(runs: list[BenchResult], slo: SLO | None) -> Selection:
    """Engines that passed validation compete on goodput. An engine is out when another beats it beyond
    noise (engine_beats: a level of the other beats all of its levels, Welch 95% interval of the difference
    above 0); one left = a win, several = a tie within noise, broken by accuracy, then memory (break_tie)."""
    entries = group(runs)
    what = f"goodput under {slo}" if slo and slo.targets() else "request throughput (no SLO given)"
    notes = []
    like = ("input_len", "output_len", "dataset", "endpoint", "temperature")  # endpoint: None offline
    workloads = {json.dumps({k: r.summary.workload.get(k) for k in like}, sort_keys=True) for r in runs}
    if len(workloads) > 1:
        notes.append("runs use different workloads: the comparison is not like for like")
    for e in entries:
        for run in e.runs:
            if not run.valid:
                continue
            iv, tps = goodput_interval(run, slo), run.summary.throughput.get("output_tokens_per_s") or 0.0
            e.levels.append((run, iv))
            if e.best_run is None or (iv.mean, tps) > (e.best_goodput, e.best_output_tps):
                e.best_goodput, e.best_run, e.best_output_tps, e.best_interval = iv.mean or 0.0, run, tps, iv
    candidates, losers = [], {}
    for e in entries:
        if e.verdict != "pass":
            failures = "; ".join((e.validation or {}).get("failures") or [])
            losers[e.name] = (f"failed validation ({failures})" if e.verdict == "fail" and failures
                              else f"validation gate: {e.verdict}")
        elif e.best_run is None:
            losers[e.name] = "no valid benchmark run (see each run's validity reasons)"
        else:
            candidates.append(e)
    if not candidates:
        return Selection(None, "no engine passed validation and has a valid run", losers, entries, notes)
    candidates.sort(key=lambda e: (e.best_goodput, e.best_output_tps), reverse=True)
    if any(e.best_interval.half_width is None for e in candidates) and len(candidates) > 1:
        notes.append("a single trial has no interval, so no engine can win on speed: run with --trials 3 or more")
    out, beaten = [], {}
    for e in candidates:
        beaten_by = [(o, hit) for o in candidates if o is not e for hit in [engine_beats(o, e)] if hit]
        if beaten_by:
            o, (run, iv, d) = beaten_by[0]
            beaten[e.name] = (o, run, iv, d)
            losers[e.name] = (f"lower {what} beyond noise: best {_g(e.best_interval)} at {e.best_run.summary.load_label} "
                              f"vs {o.name} {_g(iv)} req/s at {run.summary.load_label} ({_diff(d)})")
        else:
            out.append(e)
    if len(candidates) == 1:
        best = candidates[0]
        return Selection(best.name, f"the only engine that passed validation with a valid run: {what} "
                                    f"{_g(best.best_interval)} req/s at {best.best_run.summary.load_label}",
                         losers, entries, notes, "only candidate")
    level = {e.name: e.best_run.summary.load_label for e in candidates}
    if len(out) == 1:
        best = out[0]
        evidence = []
        for e in candidates:
            if e is not best:
                hit = engine_beats(best, e)  # the winner beats each loser directly, or another engine did
                run, iv, d = hit if hit else beaten[e.name][1:]
                who = "" if hit else f"{beaten[e.name][0].name} "
                evidence.append(f"{who}{_g(iv)} at {run.summary.load_label} vs {e.name} best {_g(e.best_interval)} at "
                                f"{level[e.name]} ({_diff(d)})")
        reason = f"wins on {what} beyond noise (req/s): " + "; ".join(evidence) + ", validation passed"
        return Selection(best.name, reason, losers, entries, notes, "win")
    best, how = break_tie(out)
    shown = ", ".join(f"{e.name} {_g(e.best_interval)} at {level[e.name]}" for e in out)
    reason = f"tie within noise on {what} ({shown} req/s; no engine beats another beyond its interval); {how}"
    for e in out:
        if e is not best:
            losers[e.name] = f"tie within noise with {best.name}, which won the tie ({how.split(':')[0]})"
    return Selection(best.name, reason, losers, entries, notes, "tie within noise")


def _match(run: BenchResult, baselines: list[BenchResult]) -> BenchResult | None:
    """The baseline run at the same load and workload (the only baseline run when there is one)."""
    if len(baselines) == 1:
        return baselines[0]
    same = [b for b in baselines if b.summary.load_label == run.summary.load_label
            and b.summary.engine_name == run.summary.engine_name]
    return same[-1] if same else None


def compare(runs: list[BenchResult], baselines: list[BenchResult], tolerance_pct: float) -> list[dict]:
    """One row per (run, metric) with a verdict (stats.regression_verdict): "regression" when the change
    for the worse exceeds tolerance_pct with 95% confidence, "ok" when it is within it with 95%
    confidence, "inconclusive" otherwise (run more trials). regressed = verdict == "regression"."""
    if tolerance_pct < 0:
        raise TrtbuildError(f"--tolerance must be >= 0 percent, got {tolerance_pct}")
    rows = []
    for run in runs:
        base = _match(run, baselines)
        if base is None or base.path == run.path:
            continue
        now, before = result_intervals(run), result_intervals(base)
        for key, (_, higher_better, label) in TRIAL_METRICS.items():
            new, old = now.get(key), before.get(key)
            if new is None or old is None or new.mean is None or not old.mean:
                continue
            verdict, change, low, high = stats.regression_verdict(new, old, tolerance_pct, higher_better)
            ci = f"95% CI [{low:+.1f}, {high:+.1f}]%" if low is not None else "no interval: run --trials 3 or more"
            rule = {"regression": f"worse beyond the {tolerance_pct:g}% tolerance",
                    "ok": f"within the {tolerance_pct:g}% tolerance",
                    "inconclusive": "inconclusive: run more trials"}[verdict]
            evidence = (f"{run.summary.engine_name} {run.summary.load_label} {label}: {new.text(4)} vs baseline "
                        f"{old.text(4)} ({change:+.1f}%, {ci}): {rule}")
            rows.append({"run": run.summary.run_id, "engine": run.summary.engine_name, "metric": label,
                         "baseline": old.mean, "current": new.mean, "change_pct": change, "low_pct": low,
                         "high_pct": high, "verdict": verdict, "regressed": verdict == "regression",
                         "evidence": evidence})
    return rows
