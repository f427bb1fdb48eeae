"""The report: Markdown (PNG files beside it) and one self-contained HTML file (PNGs inlined as base64).

    result = make_report(ws, ["fp16", "fp8"], SLO.parse("ttft=500,tpot=50"))
    result.path_html, result.selected_engine
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from trtbuild.bench.metrics import SLO
from trtbuild.bench.results import BenchResult
from trtbuild.report import plots
from trtbuild.bench import stats
from trtbuild.bench.environment import one_line
from trtbuild.bench.trials import check_samples, result_intervals
from trtbuild.report.select import Selection, collect, compare, goodput_interval, select_engine, weight_bytes
from trtbuild.workspace import Workspace

@dataclass
class ReportResult:
    report_dir: Path
    path_md: Path
    path_html: Path
    selected_engine: str | None
    selection: Selection
    regressions: list[dict] = field(default_factory=list)  # rows of compare() with regressed=True
    comparison: list[dict] = field(default_factory=list)
    figures: dict[str, Path | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"report_dir": str(self.report_dir), "markdown": str(self.path_md), "html": str(self.path_html),
                "selected_engine": self.selected_engine, "decision": self.selection.decision,
                "reason": self.selection.reason, "inconclusive": [c for c in self.comparison if c["verdict"] == "inconclusive"],
                "losers": self.selection.losers, "regressions": self.regressions,
                "figures": {k: str(v) if v else None for k, v in self.figures.items()}}


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def representative_runs(entries) -> dict[str, BenchResult]:
    """One run per engine for the distribution plots: the highest load level every engine ran, else each
    engine's best run."""
    shared = set.intersection(*[{r.summary.load_label for r in e.runs} for e in entries]) if entries else set()
    out = {}
    for e in entries:
        at_shared = [r for r in e.runs if r.summary.load_label in shared]
        pick = max(at_shared, key=plots._level) if at_shared else (e.best_run or e.runs[-1])
        out[e.name] = pick
    return out


def gpu_bound_points(entries) -> tuple[list[tuple[str, float, float]], str]:
    """(engine, measured decode tok/s at its lowest load, bandwidth bound) for runs made on a known GPU."""
    from trtbuild.plan import decode_tokens_per_s_bound, gpu_from_device_name

    points, notes = [], []
    for e in entries:
        offline = [r for r in e.runs if r.summary.mode == "offline"]  # online: the server's GPU is unknown
        if not offline:
            notes.append(f"{e.name}: online runs only: the server's GPU is unknown here")
            continue
        run = min(offline, key=plots._level)
        gpu = (run.summary.system or {}).get("gpu")
        if not gpu:
            notes.append(f"{e.name}: no GPU: bound not applicable")
            continue
        device = gpu_from_device_name(gpu.get("name", ""))
        tpot = plots._p50(run, "tpot")
        weights = weight_bytes(e.engine_dir)
        if device is None or not tpot or not weights:
            notes.append(f"{e.name}: GPU {gpu.get('name')} not in the bandwidth table or weights unknown")
            continue
        points.append((e.name, 1000.0 / tpot, decode_tokens_per_s_bound(weights, device)))
    return points, "; ".join(notes)


def _pm(interval: stats.Interval | None) -> str:
    """'12.3 +- 0.4' for a table cell; '12.3' without an interval."""
    return "-" if interval is None or interval.mean is None else interval.text(4)


def _run_rows(entries, slo: SLO | None) -> list[list]:
    rows = []
    for e in entries:
        for r in sorted(e.runs, key=plots._level):
            s, iv = r.summary, result_intervals(r)
            check = s.sample_check or check_samples(s)
            cv = iv["output_tokens_per_s"].cv
            rows.append([e.name, s.mode, s.load_label, s.num_trials, s.counts.get("succeeded"), s.counts.get("failed"),
                         _pm(iv["requests_per_s"]), _pm(iv["output_tokens_per_s"]),
                         f"{cv:.1%}" if cv is not None else "-", _pm(iv["ttft_p50"]),
                         (s.latency_ms["ttft"] or {}).get("p99"), _pm(iv["tpot_p50"]), _pm(iv["itl_token_p50"]),
                         _pm(goodput_interval(r, slo)),
                         "yes" if r.valid else "NO: " + "; ".join(s.validity.get("reasons", [])),
                         "ok" if check["ok"] else "FEW: " + "; ".join(check["flags"])])
    return rows


def _environment_lines(entries) -> list[str]:
    """One line per run and trial: what the machine was doing; a warning when it was busy."""
    out, busy = [], []
    for e in entries:
        for r in sorted(e.runs, key=plots._level):
            s = r.summary
            trials = s.trials or [{"trial": 0, "environment": s.environment}]
            for t in trials:
                env = t.get("environment")
                out.append(f"- {e.name} {s.load_label} trial {t['trial'] + 1}: {one_line(env)}")
                if (env or {}).get("busy"):
                    busy.append(f"{e.name} {s.load_label} trial {t['trial'] + 1} ({'; '.join(env['busy_reasons'])})")
    if busy:
        out.insert(0, f"**Warning: the machine was busy** during {len(busy)} trial(s): {', '.join(busy[:6])}"
                      f"{' ...' if len(busy) > 6 else ''}. Expect wider intervals; rerun on a quiet machine "
                      "before trusting small differences.")
        out.insert(1, "")
    return out


def render_markdown(title: str, selection: Selection, slo: SLO | None, figures: dict, entries, comparison,
                    tolerance: float, bound_note: str) -> str:
    out = [f"# {title}", "", f"Generated {dt.datetime.now().isoformat(timespec='seconds')} by trtbuild.", ""]
    out += ["## Selected engine", ""]
    if selection.engine:
        out += [f"**{selection.engine}** ({selection.decision}): {selection.reason}.", ""]
    else:
        out += [f"**none**: {selection.reason}.", ""]
    for name, why in selection.losers.items():
        out.append(f"- {name} lost: {why}")
    out += [f"- note: {n}" for n in selection.notes] + [""]
    out += [f"SLOs: {slo if slo and slo.targets() else 'none given (goodput = successful requests/s)'}.", ""]
    out += ["## Runs", "", _table(["engine", "mode", "load", "trials", "ok", "failed", "req/s", "out tok/s",
                                    "CV out tok/s", "TTFT p50 ms", "TTFT p99 ms (pooled)", "TPOT p50 ms",
                                    "ITL/tok p50 ms", "goodput req/s", "valid", "samples"],
                                   _run_rows(entries, slo)), ""]
    out += ["Values are the mean over trials +- the half-width of its 95% Student-t interval (t(0.975, n-1) s / "
            "sqrt(n)); CV = s / mean over trials. With one trial, latency p50s carry a 95% percentile-bootstrap "
            "interval over requests (request-to-request spread only) and throughput none. TTFT p99 is pooled over "
            "all trials' requests. A percentile needs n >= ln(0.025)/ln(q) samples (p50 6, p90 36, p99 368) and "
            "a window >= 10 x E2E p50, else the samples column says FEW. Percentiles use linear interpolation; "
            "failed requests are excluded from latency statistics (docs/benchmarks.md).", ""]
    out += ["## Machine during each trial", ""] + _environment_lines(entries) + [""]
    out += ["## Validation", ""]
    vrows = []
    for e in entries:
        m = (e.validation or {}).get("metrics") or {}
        vrows.append([e.name, e.verdict, m.get("token_agreement"), m.get("exact_match"), m.get("top1"),
                      m.get("mean_kl"), m.get("rouge_l"),
                      max((r.summary.throughput.get("output_tokens_per_s") or 0) for r in e.runs)])
    out += [_table(["engine", "verdict", "token agreement", "exact match", "top-1", "mean KL", "ROUGE-L",
                    "best out tok/s"], vrows), ""]
    captions = {"throughput_latency": "Throughput against latency (Pareto across engines and load levels)",
                "distributions": "TTFT and ITL distributions", "itl_position": "ITL by token position",
                "slo_attainment": "SLO attainment against load", "validation_speed": "Validation beside speed",
                "gpu_bound": "Decode speed against the memory-bandwidth bound"}
    missing = {"slo_attainment": "no SLO given (pass --slo ttft=MS,tpot=MS,e2e=MS)",
               "gpu_bound": bound_note or "no GPU: bound not applicable"}
    out += ["## Figures", ""]
    for key, caption in captions.items():
        out.append(f"### {caption}")
        out.append("")
        if figures.get(key):
            out.append(f"![{caption}]({figures[key].name})")
            if key == "gpu_bound" and bound_note:
                out += ["", bound_note]
        else:
            out.append(missing.get(key, "no data for this figure"))
        out.append("")
    if comparison:
        out += [f"## Against the baseline (tolerance {tolerance:g}%)", ""]
        out += ["Regression = the 95% Welch interval of the change lies beyond the tolerance; ok = it lies within; "
                "inconclusive = it straddles the tolerance (run more trials).", ""]
        out += [_table(["engine", "run", "metric", "baseline", "current", "change %", "95% CI of change %", "verdict"],
                       [[c["engine"], c["run"], c["metric"], c["baseline"], c["current"], c["change_pct"],
                         f"[{c['low_pct']:+.1f}, {c['high_pct']:+.1f}]" if c["low_pct"] is not None else "none",
                         c["verdict"].upper() if c["verdict"] == "regression" else c["verdict"]]
                        for c in comparison]), ""]
        out += [f"- {c['evidence']}" for c in comparison if c["verdict"] != "ok"] + [""]
    return "\n".join(out) + "\n"


def markdown_to_html(markdown: str, figures_dir: Path, title: str) -> str:
    """A small converter for the Markdown written above: headings, tables, lists, images (inlined)."""
    body, table = [], []

    def inline(text: str) -> str:
        text = html.escape(text)
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "")) <= set("-")]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
            rest = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            body.append(f"<table><tr>{head}</tr>{rest}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if m := re.match(r"!\[(.*?)\]\((.+?)\)", line):
            data = base64.b64encode((figures_dir / m.group(2)).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif m := re.match(r"(#+) (.*)", line):
            level = len(m.group(1))
            body.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def make_report(ws: Workspace, inputs: list, slo: SLO | None = None, baseline=None, tolerance: float = 5.0,
                out: str | Path | None = None, title: str = "trtbuild benchmark report") -> ReportResult:
    """Report on runs (run dirs, engine specs, or BenchResults); write it to `out` or ws.report_dir(<id>).

    baseline: run dirs/engine specs/BenchResults to compare with; regressions beyond `tolerance` percent
    are listed in ReportResult.regressions (the CLI turns them into exit code 4)."""
    def load(items):
        items = [items] if isinstance(items, (str, Path, BenchResult)) else list(items)
        paths = [i for i in items if not isinstance(i, BenchResult)]
        return [i for i in items if isinstance(i, BenchResult)] + (collect(ws, paths) if paths else [])

    runs = load(inputs)
    selection = select_engine(runs, slo)
    entries = selection.entries
    comparison = compare(runs, load(baseline), tolerance) if baseline else []
    report_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    final = Path(out) if out else ws.report_dir(report_id)
    with ws.atomic_dir(final) as tmp:
        reps = representative_runs(entries)
        bound_points, bound_note = gpu_bound_points(entries)
        figures = {
            "throughput_latency": plots.throughput_vs_latency(entries, tmp / "throughput_latency.png"),
            "distributions": plots.distributions(reps, tmp / "distributions.png"),
            "itl_position": plots.itl_by_position(reps, tmp / "itl_position.png"),
            "slo_attainment": plots.slo_attainment(entries, slo, tmp / "slo_attainment.png"),
            "validation_speed": plots.validation_vs_speed(entries, tmp / "validation_speed.png"),
            "gpu_bound": plots.decode_vs_bound(bound_points, tmp / "gpu_bound.png"),
        }
        markdown = render_markdown(title, selection, slo, figures, entries, comparison, tolerance, bound_note)
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.html").write_text(markdown_to_html(markdown, tmp, title))
        (tmp / "selection.json").write_text(_selection_json(selection, slo))  # the directory rename is atomic
    figures = {k: (final / v.name if v else None) for k, v in figures.items()}
    return ReportResult(final, final / "report.md", final / "report.html", selection.engine, selection,
                        [c for c in comparison if c["regressed"]], comparison, figures)


def _selection_json(selection: Selection, slo: SLO | None) -> str:
    import json

    return json.dumps({"selected_engine": selection.engine, "decision": selection.decision,
                       "reason": selection.reason, "losers": selection.losers,
                       "notes": selection.notes, "slo": slo.to_dict() if slo else None,
                       "engines": [{"name": e.name, "verdict": e.verdict, "best_goodput_rps": e.best_goodput,
                                    "best_output_tokens_per_s": e.best_output_tps,
                                    "best_goodput_interval": e.best_interval.to_dict() if e.best_interval else None,
                                    "best_run": str(e.best_run.path) if e.best_run else None}
                                   for e in selection.entries]}, indent=2) + "\n"
