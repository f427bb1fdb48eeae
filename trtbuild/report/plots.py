"""The report's figures (matplotlib, Agg backend: no display needed). Each function writes one PNG and
returns its path, or None when the data for it does not exist (the report then says why)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trtbuild.bench import metrics  # noqa: E402
from trtbuild.bench.metrics import SLO  # noqa: E402
from trtbuild.bench.results import BenchResult  # noqa: E402
from trtbuild.bench.trials import result_intervals  # noqa: E402

DPI = 110
VERDICT_COLORS = {"pass": "tab:green", "fail": "tab:red"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _level(run: BenchResult) -> float:
    load = run.summary.load
    return float(load["request_rate"] if load.get("request_rate") is not None else load.get("concurrency") or 0)


def _p50(run: BenchResult, metric: str) -> float | None:
    return (run.summary.latency_ms.get(metric) or {}).get("p50")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both lower latency (x) and higher throughput (y)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -np.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def _err(interval) -> float:
    """Error-bar half-width: the 95% interval's, 0 where there is none (one trial)."""
    return interval.half_width if interval is not None and interval.half_width is not None else 0.0


def throughput_vs_latency(entries, path: Path) -> Path | None:
    """Mean over trials, error bars = 95% intervals (both axes)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = False
    for ax, metric, label in ((axes[0], "ttft", "TTFT p50 (ms)"), (axes[1], "tpot", "TPOT p50 (ms)")):
        everything = []
        for e in entries:
            runs = sorted((r for r in e.runs if _p50(r, metric) is not None), key=_level)
            if not runs:
                continue
            ivs = [result_intervals(r) for r in runs]
            xs = [iv[f"{metric}_p50"].mean if iv[f"{metric}_p50"].mean is not None else _p50(r, metric)
                  for r, iv in zip(runs, ivs)]
            ys = [iv["output_tokens_per_s"].mean or 0 for iv in ivs]
            ax.errorbar(xs, ys, xerr=[_err(iv[f"{metric}_p50"]) for iv in ivs],
                        yerr=[_err(iv["output_tokens_per_s"]) for iv in ivs], fmt="o-", capsize=3, label=e.name)
            for r, x, y in zip(runs, xs, ys):
                ax.annotate(r.summary.load_label.replace("concurrency ", "c=").split(" (")[0], (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
            everything += list(zip(xs, ys))
            drawn = True
        if everything:
            front = sorted((everything[i] for i in pareto_front(everything)))
            ax.plot(*zip(*front), "k--", lw=1, alpha=0.6, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("output tokens/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against latency (each point: one load level; bars: 95% interval over trials)")
    return _save(fig, path) if drawn else plt.close(fig)


def _ecdf(ax, values, label):
    values = np.sort(np.asarray(values, dtype=float))
    ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=f"{label} (n={values.size})")


def distributions(runs: dict[str, BenchResult], path: Path) -> Path | None:
    """ECDFs of TTFT and of ITL (per token and per chunk) for one run per engine."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = False
    for name, run in runs.items():
        per = [metrics.request_metrics(r) for r in run.records if not r.warmup and r.error_type is None]
        ttft = [m["ttft"] * 1e3 for m in per if m["ttft"] is not None]
        itl = [v * 1e3 for m in per for v in (m["itl_token"] or [])]
        chunk = [v * 1e3 for m in per for v in m["itl_chunk"]]
        if ttft:
            _ecdf(axes[0], ttft, f"{name} @ {run.summary.load_label}")
            drawn = True
        if itl:
            _ecdf(axes[1], itl, f"{name} per token")
        if chunk and not itl:
            _ecdf(axes[1], chunk, f"{name} per chunk")
    axes[0].set_xlabel("TTFT (ms)")
    axes[1].set_xlabel("inter-token latency (ms)")
    for ax in axes:
        ax.set_ylabel("fraction of requests / gaps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Latency distributions (empirical CDF)")
    return _save(fig, path) if drawn else plt.close(fig)


def itl_by_position(runs: dict[str, BenchResult], path: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(11, 4))
    drawn = False
    for name, run in runs.items():
        pos, mean, p90 = metrics.itl_by_position(run.records)
        if pos.size:
            line, = ax.plot(pos, mean, label=f"{name} mean")
            ax.fill_between(pos, mean, p90, color=line.get_color(), alpha=0.15, label=f"{name} mean..p90")
            drawn = True
    ax.set_xlabel("output token position")
    ax.set_ylabel("ITL per token (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Inter-token latency by position in the output")
    return _save(fig, path) if drawn else plt.close(fig)


def slo_attainment(entries, slo: SLO | None, path: Path) -> Path | None:
    if slo is None or not slo.targets():
        return None
    panels = ["all", *slo.targets()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for e in entries:
        runs = sorted(e.runs, key=_level)
        reports = [metrics.compute(r.records, slo)["slo"] or {} for r in runs]
        xs = [_level(r) for r in runs]
        for ax, panel in zip(axes[0], panels):
            ys = [100 * ((rep.get("all_attainment") if panel == "all" else rep.get("attainment", {}).get(panel)) or 0)
                  for rep in reports]
            ax.plot(xs, ys, "o-", label=e.name)
    for ax, panel in zip(axes[0], panels):
        ax.set_title("all SLOs met" if panel == "all" else f"{panel} <= {slo.targets()[panel]:g} ms")
        ax.set_xlabel("load (concurrency or req/s)")
        ax.set_ylabel("requests meeting it (%)")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"SLO attainment against load ({slo})")
    return _save(fig, path)


def validation_vs_speed(entries, path: Path) -> Path:
    """Best output tok/s per engine, coloured by validation verdict, with its token agreement."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = [e.name for e in entries]
    best = [max(e.runs, key=lambda r: r.summary.throughput.get("output_tokens_per_s") or 0) for e in entries]
    speeds = [r.summary.throughput.get("output_tokens_per_s") or 0 for r in best]
    errors = [_err(result_intervals(r)["output_tokens_per_s"]) for r in best]
    colors = [VERDICT_COLORS.get(e.verdict, "tab:gray") for e in entries]
    bars = ax.bar(range(len(names)), speeds, color=colors, yerr=errors, capsize=4)
    for bar, e, err in zip(bars, entries, errors):
        m = (e.validation or {}).get("metrics") or {}
        bits = [e.verdict]
        for key, label in (("token_agreement", "agree"), ("top1", "top-1"), ("mean_kl", "KL")):
            if isinstance(m.get(key), (int, float)):
                bits.append(f"{label} {m[key]:.3g}")
        ax.annotate("\n".join(bits), (bar.get_x() + bar.get_width() / 2, bar.get_height() + err), ha="center",
                    va="bottom", fontsize=7, textcoords="offset points", xytext=(0, 2))
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("best output tokens/s")
    ax.set_ylim(0, max([s + e for s, e in zip(speeds, errors)] + [1]) * 1.35)
    ax.set_title("Speed beside validation (green: passed, red: failed, grey: not validated)")
    return _save(fig, path)


def decode_vs_bound(points: list[tuple[str, float, float]], path: Path) -> Path | None:
    """points: (engine, measured batch-1 decode tok/s, bandwidth bound tok/s)."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(points))
    ax.bar(x - 0.2, [p[1] for p in points], 0.4, label="measured decode (1000 / TPOT p50)")
    ax.bar(x + 0.2, [p[2] for p in points], 0.4, label="memory-bandwidth bound", alpha=0.6)
    for i, (_, measured, bound) in enumerate(points):
        ax.annotate(f"{measured / bound:.0%}", (i - 0.2, measured), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [p[0] for p in points], fontsize=8)
    ax.set_ylabel("tokens/s per request")
    ax.legend(fontsize=8)
    ax.set_title("Decode speed at the lowest load against the GPU's bandwidth bound")
    return _save(fig, path)
