"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import pytest
import torch

from trtbuild.cli import main


def trtbuild(capsys, workspace, *args):
    """Run `trtbuild --workspace WS ARGS` in this process -> (exit code, stdout, stderr)."""
    code = 0
    try:
        main(["--workspace", str(workspace.root), *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """References run on the test's thread: one intra-op thread, like the engine's (fast for a tiny model,
    and immune to OpenMP stalls when other processes share the cores). Import it to use it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
