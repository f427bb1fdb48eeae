"""`trtbuild run`: the whole pipeline for a profile, stage by stage.

A stage is a function PipelineRun -> StageOutcome. It reuses what the workspace already has (the
fetched model, the quantized checkpoints, the engines are all content-addressed), and reports
`skipped` when it had nothing to do. Adding a stage is one line in STAGES.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from trtbuild.cli import emit
from trtbuild.commands import backend_option, json_option, profile_option, progress_bars, variant_option
from trtbuild.errors import ValidationFailed


@dataclass
class PipelineRun:
    """What the stages share: inputs, then each stage's products."""

    ws: Any
    profile: Any
    variant: str = "all"
    backend: str = "auto"  # resolved to torch or tensorrt-llm before the first stage
    force: bool = False
    progress: bool = True
    started: float = field(default_factory=time.time)
    source: Any = None  # SourceModel, set by fetch
    quantized: dict[str, Any] = field(default_factory=dict)  # variant -> QuantizedCheckpoint
    engines: dict[str, Path] = field(default_factory=dict)  # variant -> engine dir, set by compile
    failed: dict[str, str] = field(default_factory=dict)  # variant -> why it failed validation
    bench_runs: dict[str, list[Path]] = field(default_factory=dict)  # variant -> run dirs, set by bench

    @property
    def settings(self) -> list:
        return self.profile.select(self.variant)

    def made_now(self, path: Path) -> bool:
        """True when `path` was written during this run (workspace outputs appear by one rename)."""
        return Path(path).stat().st_mtime >= self.started


@dataclass
class StageOutcome:
    skipped: bool
    detail: str
    path: Path | None = None
    data: dict = field(default_factory=dict)


def fetch_stage(run: PipelineRun) -> StageOutcome:
    from trtbuild.compile import profile_source

    run.source = profile_source(run.ws, run.profile, progress=run.progress)
    fresh = run.made_now(run.source.path) and not Path(run.profile.model.id).is_dir()
    return StageOutcome(not fresh, f"{run.source.model_id} ({len(run.source.files)} files)", run.source.path,
                        {"model_id": run.source.model_id, "revision": run.source.revision})


def quantize_stage(run: PipelineRun) -> StageOutcome:
    fp8 = [s for s in run.settings if s.is_fp8]
    if not fp8:
        return StageOutcome(True, "no FP8 variant selected")
    if run.backend == "tensorrt-llm":
        return StageOutcome(True, "TensorRT-LLM calibrates inside its build")
    from trtbuild.quantize import quantize_fp8

    for s in fp8:
        run.quantized[s.variant] = quantize_fp8(run.ws, run.source, s.calibration, progress=run.progress,
                                                kv_cache_fp8=s.kv_cache_dtype == "fp8", dtype=s.dtype)
    fresh = [v for v, q in run.quantized.items() if not q.cache_hit]
    last = run.quantized[fp8[-1].variant].path
    return StageOutcome(not fresh, f"FP8 checkpoints for {', '.join(run.quantized)}", last,
                        {v: str(q.path) for v, q in run.quantized.items()})


def compile_stage(run: PipelineRun) -> StageOutcome:
    from trtbuild.commands import warn
    from trtbuild.compile import compile_engine

    results = [compile_engine(run.ws, s, run.source, backend=run.backend, force=run.force, progress=run.progress,
                              gpu=run.profile.gpu) for s in run.settings]
    for result in results:
        run.engines[result.manifest.variant] = result.engine_dir
        for message in result.warnings:
            warn(message)
    built = [r.manifest.variant for r in results if not r.cache_hit]
    detail = f"{run.backend} engines: " + ", ".join(
        f"{r.manifest.variant} ({'cache hit' if r.cache_hit else f'built {r.seconds:.1f} s'})" for r in results)
    return StageOutcome(not built, detail, results[-1].engine_dir, {"engines": [r.to_dict() for r in results]})


def validate_stage(run: PipelineRun) -> StageOutcome:
    """Gate every engine against the reference. An engine that fails is dropped from the later stages
    (never benchmarked or selected); the run then ends with exit code 3 after the report."""
    from trtbuild.manifest import load_manifest
    from trtbuild.validation import close_references, load_validation, resolve_thresholds, validate_engine

    results, ran = {}, []
    try:
        for variant, engine_dir in run.engines.items():
            result = None if run.force else load_validation(engine_dir)
            limits = resolve_thresholds(load_manifest(engine_dir).build, run.profile.validation)
            if result is None or result.thresholds != limits:  # none yet, or judged by other limits
                result = validate_engine(run.ws, engine_dir, profile_thresholds=run.profile.validation,
                                         progress=run.progress)
                ran.append(variant)
            results[variant] = result
    finally:
        close_references()
    for variant, result in results.items():
        if not result.passed:
            run.failed[variant] = "; ".join(result.failures)
            del run.engines[variant]
    if not run.engines:
        raise ValidationFailed("every engine failed validation: " + " | ".join(
            f"{v}: {why}" for v, why in run.failed.items()) + "; see validation.json in each engine")
    detail = ", ".join(f"{v} {r.verdict}" for v, r in results.items())
    last = next(reversed(results.values()))
    return StageOutcome(not ran, detail, Path(last.engine_dir) / "validation.json",
                        {v: r.verdict for v, r in results.items()})


def bench_stage(run: PipelineRun) -> StageOutcome:
    """The profile's [bench] sweep on every engine that passed, `trials` times, engines and levels
    interleaved (trtbuild/bench/offline.py); levels already measured with the same workload and trials
    are reused."""
    from trtbuild.bench import WorkloadSpec, from_profile, load_run, profile_trials
    from trtbuild.bench.offline import run_offline_interleaved
    from trtbuild.bench.results import find_runs

    workload, loads, slo = from_profile(run.profile.bench)
    trials = profile_trials(run.profile.bench)
    done: dict = {}
    plan = {}
    for variant, engine_dir in run.engines.items():
        done[variant] = {}
        for path in find_runs(run.ws.bench_dir(engine_dir)):
            summary = load_run(path).summary
            # compared as specs: a summary written before a WorkloadSpec field existed gets its default
            if WorkloadSpec.from_dict(summary.workload) == workload and summary.num_trials == trials:
                done[variant][json.dumps(summary.load, sort_keys=True)] = path
        todo = [load for load in loads if json.dumps(load.to_dict(), sort_keys=True) not in done[variant]]
        if todo or run.force:
            plan[engine_dir] = loads if run.force else todo
    if plan:
        results = run_offline_interleaved(run.ws, plan, workload, slo, trials=trials, progress=run.progress)
        for variant, engine_dir in run.engines.items():
            for result in results.get(engine_dir, []):
                done[variant][json.dumps(result.summary.load, sort_keys=True)] = result.path
    for variant in run.engines:
        run.bench_runs[variant] = list(done[variant].values())
    detail = f"{len(loads)} load level(s) x {len(run.engines)} engine(s) x {trials} trial(s)"
    return StageOutcome(not plan, detail, run.ws.bench_dir(next(iter(run.engines.values()))))


def report_stage(run: PipelineRun) -> StageOutcome:
    from trtbuild.bench import from_profile
    from trtbuild.report import make_report

    from trtbuild.manifest import canonical_hash

    _, _, slo = from_profile(run.profile.bench)
    runs = sorted(str(path) for paths in run.bench_runs.values() for path in paths)
    # Named after its inputs (runs and validation verdicts): the same inputs give the same report.
    verdicts = {v: (Path(e) / "validation.json").stat().st_mtime_ns for v, e in run.engines.items()}
    out = run.ws.report_dir(f"{run.profile.name}-{canonical_hash([runs, verdicts, str(slo)])[:12]}")
    if (out / "report.html").is_file() and not run.force:
        selected = json.loads((out / "selection.json").read_text())["selected_engine"]
        return StageOutcome(True, f"selected engine: {selected or 'none'}", out / "report.html")
    report = make_report(run.ws, runs, slo=slo, out=out, title=f"trtbuild report: {run.profile.name}")
    detail = f"selected engine: {report.selected_engine or 'none'}"
    return StageOutcome(False, detail, report.path_html, report.to_dict())


# The pipeline, in order.
STAGES: list[tuple[str, Callable[[PipelineRun], StageOutcome]]] = [
    ("fetch", fetch_stage),
    ("quantize", quantize_stage),
    ("compile", compile_stage),
    ("validate", validate_stage),
    ("bench", bench_stage),
    ("report", report_stage),
]


def run_pipeline(run: PipelineRun, echo: Callable[[str], None] = lambda line: None) -> list[dict]:
    from trtbuild.compile import resolve_backend

    run.backend = resolve_backend(run.backend)
    report = []
    for number, (name, stage) in enumerate(STAGES, 1):
        echo(f"[{number}/{len(STAGES)}] {name} ...")
        start = time.perf_counter()
        outcome = stage(run)
        seconds = time.perf_counter() - start
        status = "skipped (already in the workspace)" if outcome.skipped else f"done in {seconds:.1f} s"
        echo(f"[{number}/{len(STAGES)}] {name}: {status}: {outcome.detail}")
        report.append({"stage": name, "skipped": outcome.skipped, "seconds": round(seconds, 3),
                       "detail": outcome.detail, "path": str(outcome.path) if outcome.path else None,
                       "data": outcome.data})
    return report


@click.command("run")
@profile_option
@variant_option()
@backend_option
@click.option("--force", is_flag=True, help="Rebuild engines even when the workspace has them.")
@json_option
@click.pass_obj
def run_cmd(ws, profile_spec, variant, backend, force, as_json):
    """The whole pipeline for a profile: fetch, quantize, compile, validate, bench, report.

    Each stage reuses what the workspace already holds and says so. An engine that fails validation is
    left out of bench and report, and the run exits with code 3. The last line is the report's path.
    """
    from trtbuild.config import load_profile

    profile = load_profile(profile_spec)
    run = PipelineRun(ws=ws, profile=profile, variant=variant, backend=backend, force=force, progress=progress_bars(as_json))
    report = run_pipeline(run, echo=(lambda line: None) if as_json else lambda line: click.echo(line, err=True))
    last = next((r["path"] for r in reversed(report) if r["path"]), None)
    summary = f"{profile.name}: {sum(not r['skipped'] for r in report)} of {len(report)} stages ran ({run.backend})"
    emit({"profile": profile.name, "backend": run.backend, "stages": report, "failed_validation": run.failed},
         summary, as_json, last)
    if run.failed:
        raise ValidationFailed("failed validation: " + " | ".join(f"{v}: {why}" for v, why in run.failed.items()))
