"""`trtbuild doctor`: what this machine can do, what it cannot and the fix; --smoke runs the whole path."""

from __future__ import annotations

import click

from trtbuild.cli import emit
from trtbuild.commands import json_option
from trtbuild.errors import TrtbuildError


@click.command("doctor")
@click.option("--smoke", is_flag=True,
              help="Also build the embedded model in fp16 and fp8, validate, serve and bench it briefly "
                   "(a few minutes on a Hopper GPU with TensorRT-LLM).")
@click.option("--backend", type=click.Choice(["tensorrt-llm", "torch"]), default="tensorrt-llm", show_default=True,
              help="With --smoke: the backend to smoke-test. torch runs the same stages on the torch runtime, "
                   "on any machine, and is labelled as such.")
@click.option("--require", "required", multiple=True, type=click.Choice(["tensorrt-llm", "torch"]),
              help="Exit 1 unless this machine can run that backend (for CI: --require tensorrt-llm).")
@json_option
@click.pass_obj
def doctor_cmd(ws, smoke, backend, required, as_json):
    """Check this machine for trtbuild: GPU and SM, driver, CUDA, torch, tensorrt_llm (1.2.x), MPI, free
    disk in the workspace, hub access and token (never printed). Each thing it cannot do comes with the fix.

    \b
      trtbuild doctor                          the checks and a verdict line
      trtbuild doctor --json                   the same as one JSON document
      trtbuild doctor --smoke                  + fp16/fp8 TensorRT-LLM engines of the embedded model, end to end
      trtbuild doctor --smoke --backend torch  the same stages on the torch backend (any machine)
    """
    from trtbuild.doctor import diagnose

    report = diagnose(ws)
    missing = [b for b in required if b not in report.backends]
    if not smoke:
        emit(report.to_dict(), report.format(), as_json)
        if missing:
            raise TrtbuildError(f"this machine cannot run the {', '.join(missing)} backend: {report.verdict}")
        return
    if backend == "tensorrt-llm" and "tensorrt-llm" not in report.backends:
        why = next((c["why"] for c in report.cannot if c["what"].startswith("tensorrt-llm")), report.verdict)
        raise TrtbuildError(f"--smoke needs TensorRT-LLM 1.2.x on an NVIDIA GPU, and this machine has none ({why}); "
                            "run `trtbuild doctor` for the fixes, or `trtbuild doctor --smoke --backend torch` to "
                            "smoke-test the torch backend here")
    if backend == "tensorrt-llm" and any(c["what"] == "FP8 TensorRT engines" for c in report.cannot):
        raise TrtbuildError("--smoke builds fp8 engines, which need SM 8.9+ (Hopper is SM 9.0): run it on an "
                            "H100/H200, or use --backend torch")
    from trtbuild.smoke import run_smoke

    echo = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    echo(f"doctor: {report.verdict}")
    result = run_smoke(ws, backend, progress=False, echo=echo)
    emit({"doctor": report.to_dict(), "smoke": result.to_dict()}, result.table(), as_json, result.path)
    if not result.passed or missing:
        failed = [f"{r.variant}: {'; '.join(r.errors) or r.validate}" for r in result.rows if not r.ok]
        raise TrtbuildError(f"smoke failed ({result.label}): " + " | ".join(failed or [report.verdict])
                            + f"; details in {result.path}")
