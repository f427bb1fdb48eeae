"""Fixtures that put the TensorRT-LLM 1.2 test double (tests/trtllm_double, see its README) in place.

    from trtllm_fixtures import trtllm_double, double_ws, double_engines   # in a test module

trtllm_double: the double on sys.path (and on PYTHONPATH, for the build's child process), a stand-in for
"a GPU is present" (trtbuild.manifest.gpu_info says so, naming the double), HF_HUB_OFFLINE=1; everything is
undone afterwards and the double's modules are dropped from sys.modules. Nothing here is a TensorRT engine.
double_engines: fp16 and fp8 engines of the embedded model built once per module through the real
`compile_engine(..., backend="tensorrt-llm")` path, in a workspace of their own (so no other test resolves
"fp16" to an engine it cannot load).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

DOUBLE_DIR = Path(__file__).parent / "trtllm_double"
DOUBLE_GPU = {"name": "tensorrt_llm test double (no GPU)", "sm": "90"}


def _install(mp: pytest.MonkeyPatch) -> SimpleNamespace:
    import trtbuild

    repo = str(Path(trtbuild.__file__).resolve().parents[1])
    mp.syspath_prepend(str(DOUBLE_DIR))
    parts = [str(DOUBLE_DIR), repo, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    mp.setenv("PYTHONPATH", os.pathsep.join(parts))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.delenv("TRTBUILD_VERIFY", raising=False)
    mp.setattr("trtbuild.manifest.gpu_info", lambda: dict(DOUBLE_GPU))
    mp.setattr("trtbuild.compile.gpu_info", lambda: dict(DOUBLE_GPU))
    _drop_modules()
    import tensorrt_llm
    from tensorrt_llm.executor import EVENTS

    assert tensorrt_llm.IS_TEST_DOUBLE and Path(tensorrt_llm.__file__).is_relative_to(DOUBLE_DIR)
    EVENTS.clear()
    return SimpleNamespace(events=EVENTS, dir=DOUBLE_DIR)


def _drop_modules() -> None:
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture
def trtllm_double():
    with pytest.MonkeyPatch.context() as mp:
        yield _install(mp)
    _drop_modules()


@pytest.fixture(scope="module")
def double_module():
    """The double for a whole module (module-scoped fixtures below build on it)."""
    with pytest.MonkeyPatch.context() as mp:
        yield _install(mp)
    _drop_modules()


@pytest.fixture(scope="module")
def double_ws(double_module, tmp_path_factory):
    from trtbuild.workspace import Workspace

    return Workspace(tmp_path_factory.mktemp("trtllm-double-ws"))


def double_settings(variant: str = "fp16"):
    """cpu-tiny's variant with room to score prompt + continuation (the engine's max_input_len bounds the
    request score() sends)."""
    from trtbuild.config import load_profile

    settings = dataclasses.replace(load_profile("cpu-tiny").variants[variant], max_input_len=512)
    if variant == "fp8":  # asked for as the h100 profile once did: TensorRT-LLM turns it off (fp16 KV cache)
        settings.plugins = {**settings.plugins, "use_fp8_context_fmha": True}
    return settings


@pytest.fixture(scope="module")
def double_engines(double_module, double_ws, tiny_model):
    from trtbuild.compile import compile_engine

    return {v: compile_engine(double_ws, double_settings(v), tiny_model, backend="tensorrt-llm", progress=False)
            for v in ("fp16", "fp8")}
