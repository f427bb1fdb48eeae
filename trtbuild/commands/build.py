"""The build half of the CLI: fetch, quantize, compile, plan, engines."""

from __future__ import annotations

from pathlib import Path

import click

from trtbuild.cli import emit
from trtbuild.commands import backend_option, json_option, model_option, profile_option, progress_bars, variant_option, warn

GiB = 1 << 30


@click.command("fetch")
@click.argument("model")
@click.option("--revision", envvar="TRTBUILD_REVISION", default=None,
              help="Commit (or tag) to pin; recorded in every engine built from it. Default: main.")
@click.option("--token", envvar="HF_TOKEN", show_envvar=True, default=None,
              help="Hugging Face token for gated repositories (accept the terms on the hub first).")
@json_option
@click.pass_obj
def fetch_cmd(ws, model, revision, token, as_json):
    """Download MODEL (a hub id) into the workspace, or check a local checkpoint directory.

    Only the files the Hugging Face pipeline needs are downloaded (no consolidated.safetensors);
    an interrupted download resumes. builtin:tiny-mistral creates the embedded model instead.
    """
    from trtbuild.models import resolve_source

    source = resolve_source(ws, model, revision, token=token, progress=progress_bars(as_json))
    size = sum((source.path / rel).stat().st_size for rel in source.files if (source.path / rel).is_file())
    human = (f"{source.model_id} @ {source.revision or 'local'}: {len(source.files)} files, "
             f"{size / GiB:.2f} GiB")
    emit({"model_id": source.model_id, "revision": source.revision, "path": str(source.path),
          "files": len(source.files), "bytes": size}, human, as_json, source.path)


@click.command("quantize")
@click.argument("model", required=False)
@profile_option
@variant_option(("fp8", "fp8-kv8"), default="fp8", envvar=None)  # TRTBUILD_VARIANT may say "all"
@click.option("--calib-dataset", envvar="TRTBUILD_CALIB_DATASET", default=None, metavar="FILE|NAME",
              help="Calibration text: a local .txt/.jsonl file, 'builtin' (the bundled set) or a hub dataset "
                   "name. Default: the profile's.")
@click.option("--calib-size", type=click.IntRange(min=1), default=None, help="Number of calibration samples.")
@click.option("--calib-seq-len", type=click.IntRange(min=1), default=None, help="Tokens per calibration sample.")
@json_option
@click.pass_obj
def quantize_cmd(ws, model, profile_spec, variant, calib_dataset, calib_size, calib_seq_len, as_json):
    """FP8 post-training quantization of MODEL (default: the profile's) with nvidia-modelopt.

    Per-tensor static FP8 (E4M3) scales for weights and activations; with --variant fp8-kv8 also for
    the KV cache. Writes a unified Hugging Face checkpoint (float8_e4m3fn weights, weight_scale,
    input_scale, hf_quant_config.json) that `trtbuild compile` reuses.
    """
    import dataclasses

    from trtbuild.compile import profile_source
    from trtbuild.config import load_profile
    from trtbuild.errors import TrtbuildError
    from trtbuild.quantize import quantize_fp8

    profile = load_profile(profile_spec)
    settings = profile.variant(variant)
    if not settings.is_fp8:
        raise TrtbuildError(f"profile {profile.name}: variant {variant} is not quantized (quantization = "
                            f"{settings.quantization!r}); set quantization = \"fp8\" in the profile")
    overrides = {"dataset": calib_dataset, "num_samples": calib_size, "max_seq_len": calib_seq_len}
    calibration = dataclasses.replace(settings.calibration, **{k: v for k, v in overrides.items() if v is not None})
    source = profile_source(ws, profile, model, progress=progress_bars(as_json))
    quantized = quantize_fp8(ws, source, calibration, kv_cache_fp8=settings.kv_cache_dtype == "fp8",
                             dtype=settings.dtype, progress=progress_bars(as_json))
    kv = ", FP8 KV cache" if quantized.kv_cache_fp8 else ""
    human = (f"{source.model_id}: FP8 weights and activations{kv}; calibrated on {calibration.dataset} "
             f"({calibration.num_samples} samples x {calibration.max_seq_len} tokens)")
    emit({"model_id": source.model_id, "path": str(quantized.path), "key": quantized.key,
          "kv_cache_fp8": quantized.kv_cache_fp8, "calibration": quantized.calibration},
         human, as_json, quantized.path)


@click.command("compile")
@profile_option
@variant_option()
@backend_option
@model_option
@click.option("--force", is_flag=True, help="Rebuild even when the workspace has this engine.")
@click.option("--print-key", is_flag=True,
              help="Build nothing: print each variant's engine key and directory (a CI cache key).")
@json_option
@click.pass_obj
def compile_cmd(ws, profile_spec, variant, backend, model, force, print_key, as_json):
    """Build engines for the profile's variants (fp16, fp8, fp8-kv8).

    An engine is keyed by its build settings, source checkpoint, backend, library versions and GPU:
    a repeated compile is a cache hit, any changed setting builds a new engine. Before building, the
    memory plan refuses a build whose weights do not fit the profile's GPU and warns when
    max_batch_size x max_seq_len is not servable. Prints one engine directory per line, last.
    """
    from trtbuild.compile import compile_profile
    from trtbuild.config import load_profile

    if print_key:
        from trtbuild.compile import engine_keys

        keys = engine_keys(ws, load_profile(profile_spec), variant, backend, model, progress=progress_bars(as_json))
        dirs = {v: ws.engine_dir(v, key) for v, key in keys.items()}
        emit({"engines": {v: {"key": keys[v], "engine_dir": str(d), "built": (d / "manifest.json").is_file()}
                          for v, d in dirs.items()}},
             "\n".join(f"{v} {keys[v]} {d}" for v, d in dirs.items()), as_json)
        return
    results = compile_profile(ws, load_profile(profile_spec), variant=variant, backend=backend, force=force,
                              progress=progress_bars(as_json), model=model)
    for result in results:
        for message in result.warnings:
            warn(message)
    rows = [f"{r.manifest.variant:8} {r.manifest.backend:12} {r.manifest.precision['weights']:14} "
            f"{'cache hit' if r.cache_hit else 'built':9} {r.seconds:7.2f} s" for r in results]
    header = f"{'variant':8} {'backend':12} {'weights':14} {'status':9} {'time':>9}"
    paths = "\n".join(str(r.engine_dir) for r in results)
    emit({"engines": [r.to_dict() for r in results]}, "\n".join([header, *rows]), as_json, paths)


@click.command("plan")
@profile_option
@variant_option()
@model_option
@click.option("--gpu", envvar="TRTBUILD_GPU", show_envvar=True, default=None,
              help="GPU to budget for (default: the profile's): H100-SXM-80GB, H100-PCIe-80GB, H200.")
@click.option("--free-gpu-memory-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.9,
              show_default=True, help="Share of the memory left after weights that the KV cache takes.")
@json_option
@click.pass_obj
def plan_cmd(ws, profile_spec, variant, model, gpu, free_gpu_memory_fraction, as_json):
    """Memory budget of each variant on a GPU, before building.

    Weight bytes, activations, KV cache bytes per token, how many tokens of KV cache fit, and whether
    max_batch_size x max_seq_len is servable. Works offline for mistralai/Mistral-7B-Instruct-v0.3
    (bundled config). Writes plan.json under the workspace's reports/.
    """
    from trtbuild.config import load_profile
    from trtbuild.plan import load_model_config, plan_memory
    from trtbuild.workspace import atomic_write_json

    profile = load_profile(profile_spec)
    model_id = model or profile.model.id
    config = load_model_config(model_id, ws, None if model else profile.model.revision)
    plans = [plan_memory(config, s, gpu=gpu or profile.gpu, free_gpu_memory_fraction=free_gpu_memory_fraction,
                         model=model_id) for s in profile.select(variant)]
    data = {"profile": profile.name, "model": model_id, "plans": [p.to_dict() for p in plans]}
    path = atomic_write_json(ws.report_dir(f"plan-{profile.name}") / "plan.json", data)
    emit(data, "\n".join(p.summary() for p in plans), as_json, path)


@click.command("engines")
@json_option
@click.pass_obj
def engines_cmd(ws, as_json):
    """List the engines in the workspace, newest first."""
    from trtbuild.compile import engine_summary

    rows = [engine_summary(path) for path in ws.engines()]
    lines = [f"{'engine':26} {'backend':12} {'weights':14} {'kv cache':14} {'size':>9}  {'built':25} model"]
    lines += [f"{Path(r['engine_dir']).name:26} {r['backend']:12} {r['precision']['weights']:14} {r['precision']['kv_cache']:14} "
              f"{r['size_bytes'] / 2**20:7.1f}MB  {r['built_at']:25} {r['model']}" for r in rows]
    human = "\n".join(lines) if rows else f"no engines in {ws.engines_dir}; build some with `trtbuild compile`"
    emit({"engines": rows}, human, as_json, ws.engines_dir)
