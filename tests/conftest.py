"""Shared fixtures: one workspace per test session, the embedded model and its engines built once.

Set TRTBUILD_TEST_WORKSPACE to reuse a workspace between runs (the tiny model and engines are then
cache hits); CI leaves it unset and builds everything from scratch in a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trtbuild.workspace import Workspace


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
