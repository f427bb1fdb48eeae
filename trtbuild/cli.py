"""The `trtbuild` command line.

Subcommands live in trtbuild/commands/ and are imported only when run, so `trtbuild --help` stays fast
(torch and transformers take seconds to import). Every command prints a short human summary or, with
--json, one JSON document; the last line is the path of what it made. A TrtbuildError becomes one line
on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from trtbuild import __version__
from trtbuild.errors import TrtbuildError

COMMANDS = {
    "fetch": ("trtbuild.commands.build", "fetch_cmd", "Download a checkpoint from the Hugging Face hub."),
    "quantize": ("trtbuild.commands.build", "quantize_cmd", "FP8 post-training quantization with nvidia-modelopt."),
    "compile": ("trtbuild.commands.build", "compile_cmd", "Build engines (fp16, fp8, fp8-kv8) from a profile."),
    "plan": ("trtbuild.commands.build", "plan_cmd", "Memory budget of a build on a GPU, before building."),
    "run": ("trtbuild.commands.pipeline", "run_cmd", "The whole pipeline for a profile, stage by stage."),
    "generate": ("trtbuild.commands.generate", "generate_cmd", "Try an engine on a prompt."),
    "validate": ("trtbuild.commands.validate", "validate_cmd", "Check an engine against the transformers reference."),
    "bench": ("trtbuild.commands.bench", "bench_cmd", "Benchmark an engine offline or an endpoint online."),
    "report": ("trtbuild.commands.bench", "report_cmd", "Markdown + HTML report with plots; pick an engine."),
    "serve": ("trtbuild.commands.serve", "serve_cmd", "OpenAI-compatible server for an engine."),
    "engines": ("trtbuild.commands.build", "engines_cmd", "List the engines in the workspace."),
    "doctor": ("trtbuild.commands.doctor", "doctor_cmd", "What this machine can do (GPU, TensorRT-LLM, disk, hub); --smoke."),
    "export": ("trtbuild.commands.deploy", "export_cmd", "Pack an engine into an archive with its sha256."),
    "import": ("trtbuild.commands.deploy", "import_cmd", "Check and unpack an engine archive (path or URL)."),
    "deploy": ("trtbuild.commands.deploy", "deploy_cmd", "Kubernetes manifests for N replicas, dashboards, alerts."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trtbuild")
@click.option("--workspace", envvar="TRTBUILD_WORKSPACE", type=click.Path(file_okay=False), default=None,
              help="Where models, engines and results live [env TRTBUILD_WORKSPACE; default ~/.cache/trtbuild].")
@click.pass_context
def cli(ctx, workspace):
    """Build, validate, benchmark and serve TensorRT-LLM engines of Mistral-7B-Instruct-v0.3.

    \b
    Without a GPU everything runs on CPU on the embedded model `builtin:tiny-mistral`:
      trtbuild run                       fetch, quantize, compile, validate, bench, report
      trtbuild compile --variant all     engines for every variant of the profile
      trtbuild serve fp8                 OpenAI-compatible server on 127.0.0.1:8000
    On an H100 with TensorRT-LLM 1.2: trtbuild run --profile h100-mistral-7b
    """
    from trtbuild.workspace import Workspace

    ctx.obj = Workspace(workspace)


def emit(data: dict, human: str, as_json: bool, path=None) -> None:
    """Print a command's result: human text or JSON; then the path of what it made, last."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        if human:
            click.echo(human)
        if path is not None:
            click.echo(str(path))


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="trtbuild", standalone_mode=False)
    except TrtbuildError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
