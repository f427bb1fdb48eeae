"""The build commands as users and scripts call them: exit codes, one-line errors, --json, last line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import trtbuild
from trtbuild.workspace import Workspace


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def test_plan_7b_offline_json(capsys, tmp_path):
    code, out, err = trtbuild(capsys, Workspace(tmp_path),
                              "plan", "--profile", "h100-mistral-7b", "--json")
    assert code == 0, err
    data = json.loads(out)
    plans = {p["variant"]: p for p in data["plans"]}
    assert data["model"] == "mistralai/Mistral-7B-Instruct-v0.3"
    assert [plans[v]["kv_bytes_per_token"] for v in ("fp16", "fp8", "fp8-kv8")] == [131072, 131072, 65536]
    assert plans["fp16"]["verdict"] == "warn" and plans["fp8-kv8"]["verdict"] == "ok"
    saved = tmp_path / "reports" / "plan-h100-mistral-7b" / "plan.json"
    assert json.loads(saved.read_text()) == data


def test_plan_human_ends_with_its_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TRTBUILD_GPU", "H200")
    code, out, _ = trtbuild(capsys, Workspace(tmp_path),
                            "plan", "--profile", "h100-mistral-7b", "--variant", "fp16")
    assert code == 0 and "fp16 on H200: OK" in out
    assert Path(last_line(out)).is_file()


@pytest.mark.parametrize("toml, message", [
    ("[build]\nmax_batch_size = 0\n", "variants.fp16.max_batch_size must be a positive integer, got 0"),
    ("[build.plugins]\ngemm_plugin = \"fp16\"\n", "plugins.gemm_plugin = 'fp16' is not valid"),
    ("[variants.int4]\n", "variant 'int4' is not one of fp16, fp8, fp8-kv8"),
    ("[build\n", "invalid TOML"),
])
def test_bad_profile_is_one_line(capsys, workspace, tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    code, out, err = trtbuild(capsys, workspace, "compile", "--profile", str(path))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_unknown_profile_name(capsys, workspace, monkeypatch):
    monkeypatch.setenv("TRTBUILD_PROFILE", "h100")
    code, _, err = trtbuild(capsys, workspace, "plan")
    assert code == 1 and "profile 'h100' not found; pass a TOML file or one of: cpu-tiny, h100-mistral-7b" in err


def test_compile_json_and_human(capsys, workspace, engine_dirs):
    code, out, err = trtbuild(capsys, workspace, "compile", "--variant", "fp8", "--backend", "torch", "--json")
    assert code == 0, err
    (engine,) = json.loads(out)["engines"]
    assert engine["cache_hit"] and engine["engine_dir"] == str(engine_dirs["fp8"])
    assert engine["precision"]["weights"] == "float8_e4m3fn"
    code, out, _ = trtbuild(capsys, workspace, "compile", "--backend", "torch")
    assert code == 0 and out.count("cache hit") == 3
    assert out.rstrip().splitlines()[-3:] == [str(engine_dirs[v]) for v in ("fp16", "fp8", "fp8-kv8")]


def test_engines_lists_the_workspace(capsys, workspace, engine_dirs):
    code, out, _ = trtbuild(capsys, workspace, "engines", "--json")
    assert code == 0
    listed = {row["engine_dir"]: row for row in json.loads(out)["engines"]}
    for variant, path in engine_dirs.items():
        assert listed[str(path)]["variant"] == variant and listed[str(path)]["backend"] == "torch"
    code, out, _ = trtbuild(capsys, workspace, "engines")
    assert last_line(out) == str(workspace.engines_dir) and engine_dirs["fp8"].name in out


def light_cpu_tiny(tmp_path) -> str:
    """cpu-tiny with a one-trial, 4-request bench: the pipeline's control flow, not a measurement."""
    from importlib import resources

    text = (resources.files("trtbuild") / "profiles" / "cpu-tiny.toml").read_text()
    assert "\ntrials = 3\n" in text and "\nnum_requests = 16\n" in text
    path = tmp_path / "cpu-tiny-light.toml"
    path.write_text(text.replace("\ntrials = 3\n", "\ntrials = 1\n").replace("\nnum_requests = 16\n", "\nnum_requests = 4\n"))
    return str(path)


def test_run_skips_what_the_workspace_has(capsys, workspace, engine_dirs, tmp_path):
    profile = light_cpu_tiny(tmp_path)
    code, out, err = trtbuild(capsys, workspace, "run", "--profile", profile, "--backend", "torch", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["stage"] for s in report["stages"]][:3] == ["fetch", "quantize", "compile"]
    assert all(s["skipped"] for s in report["stages"][:3]), report["stages"]
    compile_stage = report["stages"][2]
    assert [e["engine_dir"] for e in compile_stage["data"]["engines"]] == [str(p) for p in engine_dirs.values()]
    code, out, err = trtbuild(capsys, workspace, "run", "--profile", profile, "--backend", "torch", "--variant", "fp16")
    assert code == 0 and "[3/6] compile: skipped (already in the workspace)" in err
    assert last_line(out).endswith("report.html")  # the pipeline ends with the report


def test_fetch_local_dir_and_quantize_cached(capsys, workspace, tiny_model, engine_dirs, tmp_path):
    code, out, _ = trtbuild(capsys, workspace, "fetch", str(tiny_model.path))
    assert code == 0 and last_line(out) == str(tiny_model.path)
    code, out, err = trtbuild(capsys, workspace, "quantize", "--variant", "fp8-kv8", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["kv_cache_fp8"] is True and Path(data["path"]).is_dir()
    code, _, err = trtbuild(capsys, workspace, "quantize", "--variant", "fp16")
    assert code == 2 and "Invalid value for '--variant': 'fp16' is not one of 'fp8', 'fp8-kv8'" in err
    unquantized = tmp_path / "unquantized.toml"
    unquantized.write_text('[variants.fp8]\nquantization = "none"\n')
    code, _, err = trtbuild(capsys, workspace, "quantize", "--profile", str(unquantized))
    assert code == 1 and err == ("error: profile unquantized: variant fp8 is not quantized (quantization = 'none'); "
                                 'set quantization = "fp8" in the profile\n')


@pytest.mark.parametrize("command", ["fetch", "quantize", "compile", "plan", "engines", "run"])
def test_help(capsys, workspace, command):
    code, out, _ = trtbuild(capsys, workspace, command, "--help")
    assert code == 0 and "--json" in out and "Usage: trtbuild" in out
    if command in ("compile", "plan", "run", "quantize"):
        assert "TRTBUILD_PROFILE" in out


def test_tensorrt_llm_backend_missing_in_a_real_process(tmp_path):
    """The whole CLI as a user runs it: exit 1, one line on stderr, no traceback, no engine."""
    from trtbuild import trtllm_backend

    if trtllm_backend.available():
        pytest.skip("TensorRT-LLM and a GPU are present: the backend would build")
    env = {**os.environ, "TRTBUILD_WORKSPACE": str(tmp_path / "ws"), "TRTBUILD_BACKEND": "tensorrt-llm"}
    proc = subprocess.run([sys.executable, "-m", "trtbuild.cli", "compile", "--variant", "fp16"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: tensorrt_llm is not installed: install it from NVIDIA's index")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "ws" / "engines").exists()


def test_run_builds_what_is_missing(capsys, workspace, engine_dirs, tmp_path):
    """A workspace holding the model but no engines: fetch is skipped, compile runs, then is a cache hit."""
    fresh = Workspace(tmp_path / "ws")
    shutil.copytree(workspace.models_dir, fresh.models_dir)  # copystat keeps the old mtimes
    profile = light_cpu_tiny(tmp_path)  # cpu-tiny's engines, a lighter bench: this test is about the stages
    code, out, err = trtbuild(capsys, fresh, "run", "--profile", profile, "--backend", "torch", "--variant", "fp16",
                              "--json")
    assert code == 0, err
    stages = {s["stage"]: s for s in json.loads(out)["stages"]}
    assert stages["fetch"]["skipped"] and stages["quantize"]["detail"] == "no FP8 variant selected"
    assert not stages["compile"]["skipped"]
    (engine,) = stages["compile"]["data"]["engines"]
    assert not engine["cache_hit"] and Path(engine["engine_dir"]).name == engine_dirs["fp16"].name
    code, out, _ = trtbuild(capsys, fresh, "run", "--profile", profile, "--backend", "torch", "--variant", "fp16",
                            "--json")
    assert all(s["skipped"] for s in json.loads(out)["stages"])
