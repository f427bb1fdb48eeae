"""Shared fixtures: one workspace per test run, the embedded model and its engines built once.

Set TRTBUILD_TEST_WORKSPACE to reuse a workspace between runs (the tiny model and engines are then
cache hits); CI leaves it unset and builds everything from scratch in a temporary directory.

`make test` runs the files on three pytest-xdist workers (`-n 3 --dist loadfile`: a file's module fixtures,
its servers, stay on one worker). The workers share one workspace; whichever first needs the tiny model
or the engines builds them under a file lock while the others wait, then all read the cache.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
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


def xdist_worker(config) -> bool:
    """True in a pytest-xdist worker (not from the environment: a subprocess pytest inherits that)."""
    return hasattr(config, "workerinput")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_per_worker(request):
    """xdist workers on a 2-core machine: torch's default of one OpenMP thread per core would put several
    spinning threads on each core, which crawl (2 threads on a busy box: 4x slower). One each (the
    engines' runtime uses one thread too)."""
    if xdist_worker(request.config):
        import torch

        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", autouse=True)
def neutral_working_directory(tmp_path_factory):
    """Run every test from an empty directory: nothing may depend on where pytest was started."""
    previous = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def run_root(tmp_path_factory, request) -> Path:
    """The directory this run's workers share: TRTBUILD_TEST_WORKSPACE if set, else a temporary one."""
    root = os.environ.get("TRTBUILD_TEST_WORKSPACE")
    if root:
        return Path(root)
    # Under xdist each worker's basetemp is <run>/popen-gwN: the run's directory is shared by the workers.
    base = tmp_path_factory.getbasetemp()
    return base.parent if xdist_worker(request.config) else base


@pytest.fixture(scope="session")
def workspace(run_root) -> Workspace:
    path = run_root if os.environ.get("TRTBUILD_TEST_WORKSPACE") else run_root / "workspace"
    path.mkdir(parents=True, exist_ok=True)
    return Workspace(path)


@contextlib.contextmanager
def built_once(run_root: Path, what: str):
    """Hold the run's lock for building `what`: the first worker builds, the others then hit its cache."""
    from filelock import FileLock

    with FileLock(str(run_root / f".tests-{what}.lock")):
        yield


@pytest.fixture(scope="session")
def tokenizer():
    from trtbuild.tokenizer import Tokenizer

    return Tokenizer.v3()


@pytest.fixture(scope="session")
def tiny_model(workspace, run_root):
    """The embedded default model (builtin:tiny-mistral) as a SourceModel."""
    from trtbuild.models import resolve_source

    with built_once(run_root, "tiny-model"):
        return resolve_source(workspace, "builtin:tiny-mistral", progress=False)


@pytest.fixture(scope="session")
def profile():
    from trtbuild.config import load_profile

    return load_profile("cpu-tiny")


@pytest.fixture(scope="session")
def engine_dirs(workspace, tiny_model, profile, run_root) -> dict[str, Path]:
    """Engine directories of every variant of the cpu-tiny profile, built by the torch backend."""
    from trtbuild.compile import compile_engine

    with built_once(run_root, "engines"):
        return {name: compile_engine(workspace, settings, tiny_model, backend="torch", progress=False).engine_dir
                for name, settings in profile.variants.items()}


@dataclass(frozen=True)
class Untrained:
    workspace: Workspace
    engine_dirs: dict[str, Path]  # {"fp16": ...}
    limits: dict  # the build limits, as `limits` below: cpu-tiny's fp16 settings


@pytest.fixture(scope="session")
def untrained(run_root, profile) -> Untrained:
    """The embedded model's architecture with UNTRAINED weights (one training step instead of 400) and its cpu-tiny
    fp16 engine, in a workspace of its own (two fp16 engines in one would make the name `fp16` ambiguous).
    Ready in seconds, so the files that test serving, balancing and draining, which never read what the
    model says, run while the real model is still training: tests/plumbing/conftest.py gives them
    `workspace`, `engine_dirs` and `limits` from this."""
    from trtbuild.compile import compile_engine
    from trtbuild.manifest import load_manifest
    from trtbuild.models import local_source
    from trtbuild.tiny_model import TinyRecipe, ensure_tiny_model

    ws = Workspace(run_root / "untrained")
    with built_once(run_root, "untrained"):
        model = ensure_tiny_model(ws, TinyRecipe(steps=1), progress=False)
        engine = compile_engine(ws, profile.variants["fp16"], local_source(model), backend="torch",
                                progress=False).engine_dir
    return Untrained(ws, {"fp16": engine}, load_manifest(engine).build)


@pytest.fixture(scope="session")
def limits(engine_dirs) -> dict:
    """The fp16 engine's build limits (cpu-tiny: max_seq_len 512, max_input_len 384, max_batch_size 32)."""
    from trtbuild.manifest import load_manifest

    return load_manifest(engine_dirs["fp16"]).build


# Longest files first (durations of a sequential run), so that no long file starts last on one worker while
# the other idles. An order only: a file missing here runs after these, in collection order.
LONGEST_FIRST = ["test_haproxy.py", "test_server_features.py", "test_cli_build.py", "test_doctor.py",
                 "test_server_fuzz.py", "test_lm_eval.py", "test_server.py", "test_validate.py",
                 "test_fp8_runtime.py", "test_server_limits.py", "test_management_routes.py", "test_server_faults.py",
                 "test_report.py", "test_bench_workers.py", "test_hostile_environment.py"]


def pytest_collection_modifyitems(config, items):
    """File order for `--dist loadfile --no-loadscope-reorder`: one file that builds the tiny model first
    (one worker trains it), then every file that needs no trained model, longest first (the others run
    them meanwhile: `untrained` serves the serving-plumbing ones), then the rest, longest first."""
    needs_model = {}
    for item in items:
        file = item.path.name
        needs_model[file] = needs_model.get(file, False) or "tiny_model" in item.fixturenames
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    model_files = sorted((f for f, needed in needs_model.items() if needed), key=lambda f: rank.get(f, len(rank)))
    first = "test_tiny_model.py" if "test_tiny_model.py" in model_files else (model_files or [None])[0]
    model_free = sorted((f for f, needed in needs_model.items() if not needed), key=lambda f: rank.get(f, len(rank)))
    order = {f: i for i, f in enumerate([first, *model_free, *(f for f in model_files if f != first)])}
    items.sort(key=lambda item: order[item.path.name])  # stable: a file's tests keep their order


@pytest.fixture(params=["c", "torch"])
def kernels(request, monkeypatch) -> str:
    """Both implementations of the torch runtime's CPU hot spots (the LM head's matmul, the plain draw): the
    C kernels, built with this machine's compiler as the engine builds them, and the torch, oneDNN and numpy
    ops used where none is."""
    import trtbuild.runtime.draw as draw_module
    import trtbuild.runtime.lm_head as lm_head_module
    from trtbuild.runtime import native

    if request.param == "torch":
        for module in (draw_module, lm_head_module):
            monkeypatch.setattr(module, "cpu_kernels", lambda: None)
    else:
        assert native.cpu_kernels() is not None, "the C kernels did not build: is a C compiler (cc, gcc) installed?"
    return request.param
