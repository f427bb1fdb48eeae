"""Subcommands of `trtbuild` (see trtbuild/cli.py for the name -> module map), and the options they share.

Each command module defines click commands that take the Workspace from ctx.obj, print a short human
summary or --json, and end with the path of what they made (trtbuild.cli.emit).
"""

from __future__ import annotations

import sys

import click

from trtbuild.config import BUILTIN_PROFILES, DEFAULT_PROFILE, VARIANTS


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")(f)


def profile_option(f):
    return click.option(
        "--profile", "profile_spec", envvar="TRTBUILD_PROFILE", show_envvar=True, default=DEFAULT_PROFILE,
        show_default=True, metavar="FILE|NAME",
        help=f"Build profile: a TOML file or a builtin name ({', '.join(BUILTIN_PROFILES)}).")(f)


def variant_option(choices=(*VARIANTS, "all"), default="all", envvar="TRTBUILD_VARIANT"):
    return click.option(
        "--variant", envvar=envvar, show_envvar=envvar is not None, type=click.Choice(choices), default=default,
        show_default=True, help="Which of the profile's variants.")


def backend_option(f):
    return click.option(
        "--backend", envvar="TRTBUILD_BACKEND", show_envvar=True, default="auto", show_default=True,
        type=click.Choice(["auto", "torch", "tensorrt-llm"]),
        help="tensorrt-llm: a real TensorRT engine (GPU + TensorRT-LLM 1.2); torch: a checkpoint the torch "
             "runtime executes with the variant's numerics (any machine); auto: tensorrt-llm when possible.")(f)


def model_option(f):
    return click.option(
        "--model", envvar="TRTBUILD_MODEL", show_envvar=True, default=None, metavar="ID|DIR",
        help="Override the profile's model: a hub id, a local checkpoint directory or builtin:tiny-mistral.")(f)


def progress_bars(as_json: bool) -> bool:
    """Progress bars on a terminal; none with --json or in a log (stderr redirected to a file or pipe)."""
    return not as_json and sys.stderr.isatty()


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)
