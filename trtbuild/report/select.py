"""Which engine to ship, and did anything get slower: engine selection and baseline comparison.

Selection: among engines whose validation verdict is "pass", the one with the highest goodput
(requests/s meeting every SLO; without SLOs, successful requests/s) over its valid runs at any load
level; ties go to output tokens/s. Every other engine gets the reason it lost. Runs the client
marked invalid (client bottleneck, wrong output lengths) never count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trtbuild.bench import metrics
from trtbuild.bench.metrics import SLO
from trtbuild.bench.results import BenchResult, find_runs, load_run
from trtbuild.errors import TrtbuildError
from trtbuild.workspace import Workspace

# (summary path, display name, higher is better)
COMPARED = [
    (("throughput", "requests_per_s"), "requests/s", True),
    (("throughput", "output_tokens_per_s"), "output tok/s", True),
    (("latency_ms", "ttft", "p50"), "TTFT p50 ms", False),
    (("latency_ms", "ttft", "p99"), "TTFT p99 ms", False),
    (("latency_ms", "tpot", "p50"), "TPOT p50 ms", False),
    (("latency_ms", "itl_token", "p50"), "ITL/token p50 ms", False),
    (("latency_ms", "e2e", "p50"), "E2E p50 ms", False),
]


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
    """Requests/s that met every SLO (recomputed from the per-request records for this SLO)."""
    if slo is None or not slo.targets():
        return result.summary.throughput.get("requests_per_s") or 0.0
    report = metrics.compute(result.records, slo)["slo"]
    return (report or {}).get("goodput_rps") or 0.0


@dataclass
class EngineEntry:
    name: str
    engine_dir: str | None
    runs: list[BenchResult]
    validation: dict | None
    best_goodput: float = 0.0
    best_run: BenchResult | None = None
    best_output_tps: float = 0.0

    @property
    def verdict(self) -> str:
        return (self.validation or {}).get("verdict") or "not validated"


@dataclass
class Selection:
    engine: str | None
    reason: str
    losers: dict[str, str] = field(default_factory=dict)
    entries: list[EngineEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def group(runs: list[BenchResult]) -> list[EngineEntry]:
    entries: dict[str, EngineEntry] = {}
    for run in runs:
        name = run.summary.engine_name
        if name not in entries:
            engine_dir = run.summary.target.get("engine_dir")
            entries[name] = EngineEntry(name, engine_dir, [], load_validation(engine_dir))
        entries[name].runs.append(run)
    return list(entries.values())


def select_engine(runs: list[BenchResult], slo: SLO | None) -> Selection:
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
            g, tps = goodput(run, slo), run.summary.throughput.get("output_tokens_per_s") or 0.0
            if (g, tps) > (e.best_goodput, e.best_output_tps):
                e.best_goodput, e.best_run, e.best_output_tps = g, run, tps
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
    best = candidates[0]
    reason = (f"highest {what}: {best.best_goodput:.3g} req/s at {best.best_run.summary.load_label} "
              f"({best.best_output_tps:.4g} output tok/s), validation passed")
    for e in candidates[1:]:
        losers[e.name] = (f"lower {what}: {e.best_goodput:.3g} vs {best.best_goodput:.3g} req/s "
                          f"(best at {e.best_run.summary.load_label}, {e.best_output_tps:.4g} output tok/s)")
    return Selection(best.name, reason, losers, entries, notes)


def _get(data: dict, path: tuple) -> float | None:
    for key in path:
        data = (data or {}).get(key)
    return data if isinstance(data, (int, float)) else None


def _match(run: BenchResult, baselines: list[BenchResult]) -> BenchResult | None:
    """The baseline run at the same load and workload (the only baseline run when there is one)."""
    if len(baselines) == 1:
        return baselines[0]
    same = [b for b in baselines if b.summary.load_label == run.summary.load_label
            and b.summary.engine_name == run.summary.engine_name]
    return same[-1] if same else None


def compare(runs: list[BenchResult], baselines: list[BenchResult], tolerance_pct: float) -> list[dict]:
    """One row per (run, metric); regressed = worse than the baseline by more than tolerance_pct %."""
    if tolerance_pct < 0:
        raise TrtbuildError(f"--tolerance must be >= 0 percent, got {tolerance_pct}")
    rows = []
    for run in runs:
        base = _match(run, baselines)
        if base is None or base.path == run.path:
            continue
        for path, label, higher_better in COMPARED:
            old, new = _get(base.summary.to_dict(), path), _get(run.summary.to_dict(), path)
            if old is None or new is None or old == 0:
                continue
            change = (new - old) / abs(old) * 100
            worse = -change if higher_better else change
            rows.append({"run": run.summary.run_id, "engine": run.summary.engine_name, "metric": label,
                         "baseline": old, "current": new, "change_pct": change,
                         "regressed": worse > tolerance_pct})
    return rows
