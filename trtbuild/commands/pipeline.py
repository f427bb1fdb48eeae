"""`trtbuild run`: the whole pipeline for a profile, stage by stage.

A stage is a function PipelineRun -> StageOutcome. It reuses what the workspace already has (the
fetched model, the quantized checkpoints, the engines are all content-addressed), and reports
`skipped` when it had nothing to do. Adding a stage is one line in STAGES.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from trtbuild.cli import emit
from trtbuild.commands import backend_option, json_option, profile_option, variant_option


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


# The pipeline, in order. Later stages (validate, bench, report) are appended here.
STAGES: list[tuple[str, Callable[[PipelineRun], StageOutcome]]] = [
    ("fetch", fetch_stage),
    ("quantize", quantize_stage),
    ("compile", compile_stage),
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
    """The whole pipeline for a profile: fetch, quantize, compile (then validate, bench, report).

    Each stage reuses what the workspace already holds and says so. The last line is the path of the
    last stage's output.
    """
    from trtbuild.config import load_profile

    profile = load_profile(profile_spec)
    run = PipelineRun(ws=ws, profile=profile, variant=variant, backend=backend, force=force, progress=not as_json)
    report = run_pipeline(run, echo=(lambda line: None) if as_json else lambda line: click.echo(line, err=True))
    last = next((r["path"] for r in reversed(report) if r["path"]), None)
    summary = f"{profile.name}: {sum(not r['skipped'] for r in report)} of {len(report)} stages ran ({run.backend})"
    emit({"profile": profile.name, "backend": run.backend, "stages": report}, summary, as_json, last)
