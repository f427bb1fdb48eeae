"""compile: one variant's BuildSettings + a source checkpoint -> a verified engine directory.

    key   = engine_key(settings + source model id/revision, source file hashes, backend, versions, GPU)
    final = ws.engine_dir(variant, key)
    final has a valid manifest      -> cache hit: verify, return (well under a second)
    else plan memory on the GPU     -> refuse a build whose weights do not fit
         build inside ws.atomic_dir -> manifest written last, one rename makes it visible

Backends:
  torch         <engine>/model/ = a Hugging Face checkpoint the torch runtime executes with the
                variant's numerics: float16/bfloat16 weights, or modelopt's FP8 export (float8_e4m3fn
                weights with weight_scale / input_scale). Runs anywhere; never presented as TensorRT.
  tensorrt-llm  <engine>/engine/ = what TensorRT-LLM 1.2's LLM.save() writes (GPU only).
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from trtbuild.errors import TrtbuildError
from trtbuild.manifest import Manifest, artifact_hashes, engine_key, gpu_info, library_versions, verify_engine
from trtbuild.trtllm_effective import describe_change
from trtbuild.workspace import MANIFEST

BACKEND_CHOICES = ("auto", "torch", "tensorrt-llm")
SIDE_FILES = ("tokenizer.model.v3", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json")
SHARD_BYTES = 4 << 30  # safetensors shards of at most 4 GiB, as transformers writes them
FP8 = "float8_e4m3fn"


@dataclass
class CompileResult:
    engine_dir: Path
    manifest: Manifest
    cache_hit: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"engine_dir": str(self.engine_dir), "variant": self.manifest.variant, "key": self.manifest.key,
                "backend": self.manifest.backend, "precision": self.manifest.precision,
                "cache_hit": self.cache_hit, "seconds": round(self.seconds, 3), "warnings": self.warnings}


def resolve_backend(backend: str = "auto") -> str:
    """'auto' -> tensorrt-llm where it imports and a GPU is present, else torch. An explicit
    tensorrt-llm that cannot run here fails with the one-line reason."""
    from trtbuild import trtllm_backend

    if backend not in BACKEND_CHOICES:
        raise TrtbuildError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_CHOICES)}")
    if backend == "tensorrt-llm":
        trtllm_backend.require_trtllm()
    if backend == "auto":  # without tensorrt_llm this returns before importing torch to look for a GPU
        return "tensorrt-llm" if trtllm_backend.available() else "torch"
    return backend


def precision(settings) -> dict:
    """What the engine stores and computes in: the manifest's precision record."""
    return {
        "weights": FP8 if settings.is_fp8 else settings.dtype,
        "activations": FP8 if settings.is_fp8 else settings.dtype,  # inputs of the quantized linears
        "kv_cache": FP8 if settings.kv_cache_dtype == "fp8" else settings.dtype,
        "compute": settings.dtype,  # everything that is not an FP8 GEMM (norms, attention softmax, lm_head)
    }


def key_for(settings, source, backend: str, versions: dict, gpu: dict | None) -> str:
    build = {"settings": settings.to_dict(), "model": {"id": source.model_id, "revision": source.revision}}
    return engine_key(build, source.files, backend, versions, gpu)


def compile_engine(ws, settings, source, backend: str = "auto", force: bool = False, progress: bool = True,
                   gpu: str | None = None, free_gpu_memory_fraction: float = 0.9) -> CompileResult:
    """Build (or find in the workspace) the engine of one variant. `gpu` is the GPU the memory plan
    budgets for (default: this machine's GPU when known, else H100-SXM-80GB)."""
    start = time.perf_counter()
    backend = resolve_backend(backend)
    versions = library_versions()
    build_gpu = gpu_info() if backend == "tensorrt-llm" else None
    key = key_for(settings, source, backend, versions, build_gpu)
    final = ws.engine_dir(settings.variant, key)
    if (final / MANIFEST).is_file() and not force:
        manifest = verify_engine(final)  # a tampered or foreign engine is a clear error, not a cache hit
        return CompileResult(final, manifest, True, time.perf_counter() - start)

    plan = _plan(source, settings, gpu, free_gpu_memory_fraction)
    if plan.verdict == "refuse":
        raise TrtbuildError(f"{settings.variant} cannot run on {plan.gpu}: {plan.reasons[0]}")
    warnings = [f"{settings.variant} on {plan.gpu}: {reason}" for reason in plan.reasons]

    from tqdm.auto import tqdm

    first = "tensorrt-llm build" if backend == "tensorrt-llm" else "quantize" if settings.is_fp8 else "convert"
    bar = tqdm(total=2, desc=f"compile {settings.variant} ({backend})", unit="stage", disable=not progress)
    with bar, ws.atomic_dir(final) as tmp:
        bar.set_postfix_str(first)
        if backend == "tensorrt-llm":
            calibration = _build_trtllm(ws, settings, source, tmp, final.name, progress)
            check_trtllm_engine(tmp / "engine", settings)
            changes = trtllm_changes(settings, tmp / "engine")
            warnings += [describe_change(c) for c in changes]
        else:
            calibration = _build_torch(ws, settings, source, tmp / "model", progress)
            check_weights(tmp / "model", settings)  # the files really hold what the manifest will claim
        bar.update()
        bar.set_postfix_str("hash + manifest")  # the manifest is written last: its presence = finished
        manifest = _manifest(settings, source, backend, key, versions, build_gpu, calibration, plan, tmp,
                             time.perf_counter() - start)
        manifest.save(tmp)
        bar.update()
    return CompileResult(final, manifest, False, time.perf_counter() - start, warnings)


def compile_profile(ws, profile, variant: str = "all", backend: str = "auto", force: bool = False,
                    progress: bool = True, model: str | None = None) -> list[CompileResult]:
    """Every selected variant of a profile, from its source model (fetched or created once)."""
    selected = profile.select(variant)
    backend = resolve_backend(backend)
    source = profile_source(ws, profile, model, progress)
    return [compile_engine(ws, s, source, backend=backend, force=force, progress=progress, gpu=profile.gpu)
            for s in selected]


def engine_keys(ws, profile, variant: str = "all", backend: str = "auto", model: str | None = None,
                progress: bool = True) -> dict[str, str]:
    """variant -> the engine key `compile` would build or reuse (ws.engine_dir(variant, key) is its directory),
    without building: for CI caches keyed by engine key. Needs the source checkpoint (fetched or created),
    since its file hashes are part of the key."""
    backend = resolve_backend(backend)
    source = profile_source(ws, profile, model, progress)
    versions, gpu = library_versions(), gpu_info() if backend == "tensorrt-llm" else None
    return {s.variant: key_for(s, source, backend, versions, gpu) for s in profile.select(variant)}


def profile_source(ws, profile, model: str | None = None, progress: bool = True):
    """The profile's model at its pinned revision, or `model` (a --model override) as given."""
    from trtbuild.models import resolve_source

    revision = profile.model.revision if model is None else None
    return resolve_source(ws, model or profile.model.id, revision, progress=progress)


# --- stages ---------------------------------------------------------------------------------------

def _plan(source, settings, gpu: str | None, fraction: float):
    from trtbuild.plan import DEFAULT_GPU, gpu_from_device_name, load_model_config, plan_memory

    if gpu is None:
        here = gpu_info()
        match = gpu_from_device_name(here["name"]) if here else None
        gpu = match.name if match else DEFAULT_GPU
    return plan_memory(load_model_config(source.path), settings, gpu=gpu, free_gpu_memory_fraction=fraction,
                       model=source.model_id)


def _build_torch(ws, settings, source, model_dir: Path, progress: bool) -> dict | None:
    """The torch backend's engine: the checkpoint in the variant's storage precision."""
    if settings.is_fp8:
        from trtbuild.quantize import quantize_fp8

        quantized = quantize_fp8(ws, source, settings.calibration, kv_cache_fp8=settings.kv_cache_dtype == "fp8",
                                 dtype=settings.dtype, progress=progress)
        shutil.copytree(quantized.path, model_dir)
        calibration = {**quantized.calibration, "quantized_key": quantized.key}
    else:
        convert_checkpoint(source.path, model_dir, settings.dtype)
        calibration = None
    copy_tokenizer(source.path, model_dir)
    return calibration


def trtllm_work_dir(ws, name: str) -> Path:
    """TensorRT-LLM's scratch space for one build (its workspace, the calibration dataset): inside the
    trtbuild workspace, not $TMPDIR, and removed after the build."""
    return ws.tmp_dir / f"{name}.trtllm"


def _build_trtllm(ws, settings, source, tmp: Path, name: str, progress: bool) -> dict | None:
    from trtbuild import trtllm_backend
    from trtbuild.trtllm_config import calib_config

    # The log lives beside tmp (not in it) so that it survives a failed build for the user to read.
    record = trtllm_backend.build_engine(settings, source.path, tmp / "engine", progress=progress,
                                         log_path=ws.tmp_dir / f"{name}.build.log",
                                         work_dir=trtllm_work_dir(ws, name))
    copy_tokenizer(source.path, tmp / "engine")
    # TensorRT-LLM's guided decoding (xgrammar) reads a Hugging Face tokenizer.json (trtbuild.hf_tokenizer)
    from trtbuild.hf_tokenizer import write_hf_tokenizer

    write_hf_tokenizer(tmp / "engine")
    return {**calib_config(settings), "dataset": record} if settings.is_fp8 else None


def trtllm_changes(settings, engine_dir: Path) -> list[dict]:
    """Requested settings the TensorRT-LLM build changed, read back from the engine's config.json."""
    from trtbuild.trtllm_config import build_config, quant_config
    from trtbuild.trtllm_effective import effective_settings, read_engine_config, requested_settings, setting_changes

    requested = requested_settings(build_config(settings), quant_config(settings))
    return setting_changes(requested, effective_settings(read_engine_config(engine_dir)))


def _manifest(settings, source, backend, key, versions, build_gpu, calibration, plan, engine_dir: Path,
              seconds: float) -> Manifest:
    from trtbuild.trtllm_config import trtllm_summary

    # TensorRT-LLM's workspace (trtllm_work_dir, removed after the build), as a portable placeholder.
    work = "<workspace>/tmp/<engine>.trtllm/llm-workspace" if backend == "tensorrt-llm" else None
    trtllm = trtllm_summary(settings, source.path, workspace=work)
    trtllm["memory_plan"] = plan.to_dict()
    if backend == "tensorrt-llm":  # what TensorRT-LLM really built (config.json), and what it changed
        from trtbuild.trtllm_effective import effective_settings, read_engine_config

        trtllm["effective"] = effective_settings(read_engine_config(engine_dir / "engine"))
        trtllm["changed"] = trtllm_changes(settings, engine_dir / "engine")
    return Manifest(
        key=key, variant=settings.variant, backend=backend, precision=precision(settings),
        build=settings.to_dict(),
        source={"model_id": source.model_id, "revision": source.revision, "path": str(source.path),
                "files": dict(source.files)},
        calibration=calibration, versions=versions, gpu=build_gpu or gpu_info(), built_at=Manifest.now(),
        build_seconds=round(seconds, 3), artifacts=artifact_hashes(engine_dir), trtllm=trtllm,
    )


# --- checkpoint files -----------------------------------------------------------------------------

def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files of a HF checkpoint: those its index names, else model*.safetensors (never
    Mistral's consolidated.safetensors, which holds the same weights under other names)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = [model_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise TrtbuildError(f"{model_dir} holds no model*.safetensors weights; pass a Hugging Face checkpoint")
    return files


def convert_checkpoint(src: Path, dst: Path, dtype: str) -> None:
    """Copy a HF checkpoint with every floating-point tensor cast to `dtype` (embeddings, lm_head
    and norms included). Shards of at most SHARD_BYTES are written as they fill, so memory stays
    bounded for the 7B; they are named model-0000i-of-0000N once N is known."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, dtype)
    dst.mkdir(parents=True)
    shards: list[list[str]] = []  # tensor names per written shard
    current, size = {}, 0

    def flush():
        save_file(current, str(dst / f"shard-{len(shards)}.tmp"), metadata={"format": "pt"})
        shards.append(list(current))

    for path in safetensors_files(src):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                tensor = tensor.to(target) if tensor.is_floating_point() else tensor
                if current and size + tensor.nbytes > SHARD_BYTES:
                    flush()
                    current, size = {}, 0
                current[name], size = tensor.contiguous(), size + tensor.nbytes
    flush()
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        (dst / f"shard-{i}.tmp").rename(dst / name)
    if n > 1:
        weight_map = {tensor: name for name, tensors in zip(names, shards) for tensor in tensors}
        (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((Path(src) / "config.json").read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = dtype
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def copy_tokenizer(src: Path, dst: Path) -> None:
    """The source's tokenizer and generation-config files; mistral-common's v3 model when the source
    ships no tokenizer."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (Path(src) / name).is_file() and not (dst / name).exists():
            shutil.copy2(Path(src) / name, dst / name)
    if not any((dst / name).is_file() for name in ("tokenizer.model.v3", "tokenizer.model")):
        from importlib import resources

        bundled = resources.files("mistral_common") / "data" / "mistral_instruct_tokenizer_240323.model.v3"
        with resources.as_file(bundled) as path:
            shutil.copyfile(path, dst / "tokenizer.model.v3")


def tensor_dtypes(model_dir: Path) -> dict[str, str]:
    """name -> safetensors dtype ('F16', 'F8_E4M3', ...), read from the file headers only."""
    dtypes = {}
    for path in safetensors_files(model_dir):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        dtypes.update({k: v["dtype"] for k, v in header.items() if k != "__metadata__"})
    return dtypes


def check_weights(model_dir: Path, settings) -> None:
    """The checkpoint really holds what the manifest will claim: fp16 -> only float16 floats;
    fp8 -> float8_e4m3fn linear weights, each with a weight_scale and an input_scale."""
    dtypes = tensor_dtypes(model_dir)
    want = {"float16": "F16", "bfloat16": "BF16"}[settings.dtype]
    if not settings.is_fp8:
        wrong = sorted(k for k, v in dtypes.items() if v.startswith(("F", "BF")) and v != want)
        if wrong:
            raise TrtbuildError(f"{model_dir}: {len(wrong)} tensors are not {settings.dtype} (e.g. {wrong[0]})")
        return
    fp8 = [k for k, v in dtypes.items() if v == "F8_E4M3"]
    missing = [k for k in fp8 for scale in ("weight_scale", "input_scale")
               if k.removesuffix("weight") + scale not in dtypes]
    if not fp8 or missing:
        raise TrtbuildError(f"{model_dir}: the FP8 export has {len(fp8)} float8_e4m3fn weights and "
                            f"{len(missing)} missing scales; re-run with --force (modelopt export changed?)")


def check_trtllm_engine(engine_dir: Path, settings) -> None:
    """LLM.save() wrote a complete engine: config.json and one rank<N>.engine per tensor-parallel rank."""
    ranks = sorted(Path(engine_dir).glob("rank*.engine"))
    if not (Path(engine_dir) / "config.json").is_file() or len(ranks) != settings.tp_size:
        raise TrtbuildError(f"TensorRT-LLM saved {len(ranks)} rank engine(s) for tp_size {settings.tp_size} "
                            f"in {engine_dir}; see the build log and rebuild with --force")


def engine_summary(engine_dir: Path) -> dict:
    """One row of `trtbuild engines`: read from the manifest, no hashing."""
    from trtbuild.manifest import load_manifest

    m = load_manifest(engine_dir)
    size = sum(p.stat().st_size for p in Path(engine_dir).rglob("*") if p.is_file())
    validation = m.results.get("validation")
    return {"engine_dir": str(engine_dir), "variant": m.variant, "backend": m.backend, "key": m.key[:16],
            "precision": m.precision, "model": m.source.get("model_id"), "built_at": m.built_at,
            "size_bytes": size, "validation": validation, **({"gpu": m.gpu} if m.gpu else {})}

