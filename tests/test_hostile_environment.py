"""The suite does not depend on the caller's shell: a part of it runs again, in a subprocess, with the
variables an air-gapped GPU cluster or a careless user exports, from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HOSTILE = {
    "HF_HUB_OFFLINE": "1",  # the fetch tests must still reach their local hub
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_TOKEN": "hf_bad",  # "anonymous" requests must stay anonymous
    "HF_HOME": "/nonexistent/hf-home",
    "TRANSFORMERS_OFFLINE": "1",
    "TRTBUILD_WORKSPACE": "/nonexistent/x",  # every test builds in its own workspace
    "TRTBUILD_BACKEND": "tensorrt-llm",  # absent here: a test that inherited it would fail to build
    "TRTBUILD_PROFILE": "h100-mistral-7b",
    "HOME": "/nonexistent/home",
}


def test_conftest_removed_the_callers_variables():
    assert not {name for name in os.environ if name.startswith(("HF_HUB_OFFLINE", "HF_TOKEN", "TRTBUILD_W"))}
    assert os.environ["HOME"] != os.path.expanduser("~" + os.environ.get("USER", "root"))  # a private HOME
    assert Path.cwd() != TESTS.parent  # tests run from an empty directory


@pytest.mark.slow
def test_a_part_of_the_suite_passes_under_hostile_variables(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_XDIST")}
    env.update(HOSTILE)
    env.pop("TRTBUILD_TEST_WORKSPACE", None)
    # fetch (hub variables), the build CLI (TRTBUILD_* defaults) and plan, less the one test that trains
    # the tiny model (a minute of CPU): this stays a few seconds long.
    selection = [str(TESTS / "test_fetch.py"), str(TESTS / "test_plan.py"), str(TESTS / "test_cli_build.py"),
                 "-k", "(not cli_build or plan or help or profile) and not builtin_model"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
