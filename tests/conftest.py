"""Shared fixtures: one workspace per test session, the embedded model and its engines built once.

Set TRTBUILD_TEST_WORKSPACE to reuse a workspace between runs (the tiny model and engines are then
cache hits); CI leaves it unset and builds everything from scratch in a temporary directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The caller's shell must not reach the suite: an air-gapped cluster's HF_HUB_OFFLINE=1, a mirror's
# HF_ENDPOINT, a stale HF_TOKEN or a TRTBUILD_WORKSPACE would otherwise change what the code under test
# does. This runs before any test module imports huggingface_hub, which reads its variables once, at
# import. Tests that need a variable set it themselves (monkeypatch.setenv).
KEPT = {"TRTBUILD_TEST_WORKSPACE"}  # the suite's own opt-in (see above)
CALLER_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TRTBUILD_")


def isolate_environment() -> Path:
    for name in list(os.environ):
        if name.startswith(CALLER_PREFIXES) and name not in KEPT:
            del os.environ[name]
    home = Path(tempfile.mkdtemp(prefix="trtbuild-tests-home-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.update({
        "HOME": str(home),  # no stored hub token, no user config
        "XDG_CACHE_HOME": str(home / ".cache"),  # the default workspace lives here, never in the user's
        "HF_HOME": str(home / "hf"),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # the discard port: a test that forgets its local hub fails fast
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_OFFLINE": "1",  # `datasets` (lm-eval's) would retry the discard port for ~20 s per load
    })
    return home


TEST_HOME = isolate_environment()

from trtbuild.workspace import Workspace  # noqa: E402  (after the environment is settled)


@pytest.fixture(scope="session", autouse=True)
def neutral_working_directory(tmp_path_factory):
    """Run every test from an empty directory: nothing may depend on where pytest was started."""
    previous = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    root = os.environ.get("TRTBUILD_TEST_WORKSPACE")
    return Workspace(Path(root) if root else tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session")
def tokenizer():
    from trtbuild.tokenizer import Tokenizer

    return Tokenizer.v3()


@pytest.fixture(scope="session")
def tiny_model(workspace):
    """The embedded default model (builtin:tiny-mistral) as a SourceModel."""
    from trtbuild.models import resolve_source

    return resolve_source(workspace, "builtin:tiny-mistral", progress=False)


@pytest.fixture(scope="session")
def profile():
    from trtbuild.config import load_profile

    return load_profile("cpu-tiny")


@pytest.fixture(scope="session")
def engine_dirs(workspace, tiny_model, profile) -> dict[str, Path]:
    """Engine directories of every variant of the cpu-tiny profile, built by the torch backend."""
    from trtbuild.compile import compile_engine

    return {name: compile_engine(workspace, settings, tiny_model, backend="torch", progress=False).engine_dir
            for name, settings in profile.variants.items()}


@pytest.fixture(scope="session")
def limits(engine_dirs) -> dict:
    """The fp16 engine's build limits (cpu-tiny: max_seq_len 512, max_input_len 384, max_batch_size 32)."""
    from trtbuild.manifest import load_manifest

    return load_manifest(engine_dirs["fp16"]).build
