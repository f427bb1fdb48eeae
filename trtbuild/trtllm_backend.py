"""The TensorRT-LLM 1.2 build adapter: the dicts of trtllm_config, turned into real objects, built, saved.

tensorrt_llm is imported lazily (it needs an NVIDIA GPU, CUDA 13 and MPI, and takes seconds to import),
and only inside a child process: the LLM API spawns MPI workers, which re-import the main module, so
the build must run under `if __name__ == "__main__":` (see ../shared/notes/trtllm.md). The parent
streams the child's log to a file and turns a failure into one line naming that file.

    python -m trtbuild.trtllm_backend build --settings SETTINGS.json --model HF_DIR --out ENGINE_DIR \
        [--workspace DIR] [--calib-dataset DIR_OR_NAME]

Calibration inputs are checked (and bundled or file data written as a local dataset directory,
trtbuild.trtllm_calib) in the parent, before the child loads anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from trtbuild.errors import TrtbuildError

SUPPORTED_MAJOR_MINOR = "1.2"
INSTALL_HINT = ("install it from NVIDIA's index on a Hopper machine (pip install --extra-index-url "
                "https://pypi.nvidia.com tensorrt_llm~=1.2) or use --backend torch")


def installed_version() -> str | None:
    """tensorrt_llm's version from its package metadata (cheap: does not import it)."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        return None
    for dist in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def check_version(version: str | None) -> None:
    if version is None:
        raise TrtbuildError(f"tensorrt_llm is not installed: {INSTALL_HINT}")
    if version != "unknown" and not (version == SUPPORTED_MAJOR_MINOR or version.startswith(SUPPORTED_MAJOR_MINOR + ".")):
        raise TrtbuildError(f"tensorrt_llm {version} is installed but trtbuild's engine path targets "
                            f"{SUPPORTED_MAJOR_MINOR}.x (the last line with the TensorRT backend): {INSTALL_HINT}")


def require_trtllm() -> str:
    """The installed tensorrt_llm version, or a one-line TrtbuildError naming what is missing."""
    from trtbuild.manifest import gpu_info

    version = installed_version()
    check_version(version)
    if gpu_info() is None:
        raise TrtbuildError("no CUDA GPU found: TensorRT-LLM builds engines on an NVIDIA GPU (Hopper for FP8); "
                            "use --backend torch on this machine")
    return version


def available() -> bool:
    try:
        require_trtllm()
        return True
    except TrtbuildError:
        return False


def build_engine(settings, source_dir: str | Path, out_dir: str | Path, progress: bool = True,
                 log_path: str | Path | None = None, work_dir: str | Path | None = None) -> dict | None:
    """Build and save a TensorRT engine of `settings` from the HF checkpoint `source_dir` into `out_dir`.

    work_dir (default out_dir.parent / "trtllm-work") holds TensorRT-LLM's own workspace (its quantized
    checkpoint and engine before save() copies it out) and the calibration dataset directory; it is
    removed afterwards. The build runs in a child Python (MPI); its output goes to `log_path` (default
    out_dir.parent / build.log) and, with progress, to the terminal. Returns the calibration record
    (None for unquantized builds).
    """
    from trtbuild.trtllm_calib import prepare_calibration

    require_trtllm()
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.parent / "trtllm-work"
    log_path = Path(log_path) if log_path else out_dir.parent / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    llm_workspace = work_dir / "llm-workspace"
    llm_workspace.mkdir(parents=True, exist_ok=True)
    try:
        calib_dataset, record = (prepare_calibration(settings.calibration.dataset, work_dir) if settings.is_fp8
                                 else (None, None))
        settings_file = log_path.with_suffix(".settings.json")
        settings_file.write_text(json.dumps(settings.to_dict()))
        cmd = [sys.executable, "-m", "trtbuild.trtllm_backend", "build", "--settings", str(settings_file),
               "--model", str(source_dir), "--out", str(out_dir), "--workspace", str(llm_workspace)]
        if calib_dataset:
            cmd += ["--calib-dataset", calib_dataset]
        _run_logged(cmd, log_path, progress)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if not out_dir.is_dir():
        raise TrtbuildError(f"TensorRT-LLM build wrote no engine to {out_dir}: {_last_line(log_path)}; "
                            f"full log: {log_path}")
    return record


def _run_logged(cmd: list[str], log_path: Path, progress: bool) -> None:
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                log.write(line)
                if progress:
                    sys.stderr.write(line)
            code = proc.wait()
        except BaseException:  # Ctrl-C: stop the build (and its MPI workers) before cleaning up
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        raise TrtbuildError(f"TensorRT-LLM build failed (exit {code}): {_last_line(log_path)}; full log: {log_path}")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _build_in_this_process(settings, model_dir: str, out_dir: str, workspace: str | None = None,
                           calib_dataset: str | None = None) -> None:
    """Runs in the child: the 1.2 LLM API with the TensorRT backend."""
    from tensorrt_llm import BuildConfig
    from tensorrt_llm._tensorrt_engine import LLM  # NOT `from tensorrt_llm import LLM` (PyTorch backend)
    from tensorrt_llm.llmapi import CalibConfig, KvCacheConfig, QuantAlgo, QuantConfig

    from trtbuild.trtllm_config import llm_args

    args = llm_args(settings, model_dir, workspace, calib_dataset)
    args["kv_cache_config"] = KvCacheConfig(**args["kv_cache_config"])
    build = dict(args.pop("build_config"))
    plugins = build.pop("plugin_config")
    build_config = BuildConfig(**build)
    for name, value in plugins.items():  # PluginConfig validates on assignment
        setattr(build_config.plugin_config, name, value)
    quant = args.pop("quant_config", None)
    if quant is not None:
        kv_algo = quant["kv_cache_quant_algo"]
        args["quant_config"] = QuantConfig(quant_algo=QuantAlgo[quant["quant_algo"]],
                                           kv_cache_quant_algo=QuantAlgo[kv_algo] if kv_algo else None)
    calib = args.pop("calib_config", None)
    if calib is not None:
        args["calib_config"] = CalibConfig(**calib)
    # The build-only LLM still starts TensorRT-LLM's executor (MPI worker, engine load, the small KV cache
    # of build_kv_cache_config): 1.2's _TrtLLM._build_model has no build-only mode.
    llm = LLM(**args, build_config=build_config)
    try:
        llm.save(out_dir)
    finally:
        llm.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trtbuild.trtllm_backend",
                                     description="Build one TensorRT-LLM engine (run by `trtbuild compile`).")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build")
    build.add_argument("--settings", required=True, help="BuildSettings as a JSON file")
    build.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    build.add_argument("--out", required=True, help="engine directory to write (LLM.save)")
    build.add_argument("--workspace", default=None, help="TensorRT-LLM's workspace (TrtLlmArgs.workspace)")
    build.add_argument("--calib-dataset", default=None, help="calibration dataset name or directory")
    args = parser.parse_args(argv)

    from trtbuild.config import BuildSettings

    settings = BuildSettings.from_dict(json.loads(Path(args.settings).read_text()))
    _build_in_this_process(settings, args.model, args.out, args.workspace, args.calib_dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
