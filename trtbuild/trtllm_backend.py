"""The TensorRT-LLM 1.2 build adapter: the dicts of trtllm_config, turned into real objects, built, saved.

tensorrt_llm is imported lazily (it needs an NVIDIA GPU, CUDA 13 and MPI, and takes seconds to import),
and only inside a child process: the LLM API spawns MPI workers, which re-import the main module, so
the build must run under `if __name__ == "__main__":` (see ../shared/notes/trtllm.md). The parent
streams the child's log to a file and turns a failure into one line naming that file.

    python -m trtbuild.trtllm_backend build --settings SETTINGS.json --model HF_DIR --out ENGINE_DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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
                 log_path: str | Path | None = None) -> Path:
    """Build and save a TensorRT engine of `settings` from the HF checkpoint `source_dir` into `out_dir`.

    Runs the build in a child Python (MPI); its output goes to `log_path` (default out_dir.parent /
    build.log) and, with progress, to the terminal. Returns out_dir.
    """
    require_trtllm()
    if settings.is_fp8:
        dataset = Path(settings.calibration.dataset).expanduser()
        if dataset.is_file():  # CalibConfig reads a hub dataset name or a dataset directory, not a file
            raise TrtbuildError(f"TensorRT-LLM calibrates on a Hugging Face dataset name or a local dataset "
                                f"directory, not the file {dataset}; set [calibration] dataset accordingly")
    out_dir = Path(out_dir)
    log_path = Path(log_path) if log_path else out_dir.parent / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    settings_file = log_path.with_suffix(".settings.json")
    settings_file.write_text(json.dumps(settings.to_dict()))
    cmd = [sys.executable, "-m", "trtbuild.trtllm_backend", "build", "--settings", str(settings_file),
           "--model", str(source_dir), "--out", str(out_dir)]
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
    if code != 0 or not out_dir.is_dir():
        last = _last_line(log_path)
        raise TrtbuildError(f"TensorRT-LLM build failed (exit {code}): {last}; full log: {log_path}")
    return out_dir


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _build_in_this_process(settings, model_dir: str, out_dir: str) -> None:
    """Runs in the child: the 1.2 LLM API with the TensorRT backend."""
    from tensorrt_llm import BuildConfig
    from tensorrt_llm._tensorrt_engine import LLM  # NOT `from tensorrt_llm import LLM` (PyTorch backend)
    from tensorrt_llm.llmapi import CalibConfig, QuantAlgo, QuantConfig

    from trtbuild.trtllm_config import llm_args

    args = llm_args(settings, model_dir)
    build = dict(args.pop("build_config"))
    plugins = build.pop("plugin_config")
    build_config = BuildConfig(**build)
    for name, value in plugins.items():  # PluginConfig validates on assignment
        setattr(build_config.plugin_config, name, value)
    quant = args.pop("quant_config", None)
    if quant is not None:
        kv_algo = quant["kv_cache_quant_algo"]
        args["quant_config"] = QuantConfig(quant_algo=QuantAlgo[quant["quant_algo"]],
                                           kv_cache_quant_algo=QuantAlgo[kv_algo] if kv_algo else None,
                                           exclude_modules=quant["exclude_modules"])
    calib = args.pop("calib_config", None)
    if calib is not None:
        args["calib_config"] = CalibConfig(**calib)
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
    args = parser.parse_args(argv)

    from trtbuild.config import BuildSettings

    settings = BuildSettings.from_dict(json.loads(Path(args.settings).read_text()))
    _build_in_this_process(settings, args.model, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
