"""What TensorRT-LLM really built: settings read back from an engine's config.json, the settings trtbuild
predicts from TensorRT-LLM's own build rules, and every requested setting the library changed.

TensorRT-LLM's build() silently rewrites some requested settings (it logs a warning and goes on). The
engine's config.json (`pretrained_config`, `build_config` with its `plugin_config`) records what was
built, so after a build trtbuild reads it back (effective_settings), records it in the manifest
(manifest.trtllm["effective"]) and shows the user each difference from the request (setting_changes).

predicted_plugin_config() mirrors the rules of tensorrt_llm/builder.py build() (NVIDIA/TensorRT-LLM,
index id 205252225: the last dataclass-BuildConfig builder.py on the 1.2 line; these rules did not move
with the Pydantic BuildConfig). It lets tests and `trtbuild plan`-style tools say what a build will do
before a GPU is involved; the read-back stays the source of truth.
"""

from __future__ import annotations

import json
from pathlib import Path

from trtbuild.errors import TrtbuildError

BUILDER_SOURCE = "tensorrt_llm/builder.py build() @ NVIDIA/TensorRT-LLM index id 205252225 (1.2 line)"
FP8_CONTEXT_FMHA_ALGOS = ("FP8", "W4A8_AWQ", "NVFP4")  # quant algos that allow FP8 context FMHA
# PluginConfig defaults of the fields the rules read (plugin.py@c20322ff).
PLUGIN_DEFAULTS = {"context_fmha": True, "use_paged_context_fmha": True, "use_fp8_context_fmha": True,
                   "reduce_fusion": False, "user_buffer": False, "norm_quant_fusion": False}
AUTO = "auto"  # a plugin dtype resolved to the model dtype at build time: not a change


def predicted_plugin_config(requested: dict, quant_algo: str | None, kv_cache_quant_algo: str | None,
                            sm: int = 90, tp_size: int = 1, architecture: str = "LlamaForCausalLM") -> dict:
    """The plugin settings builder.py build() ends up with for `requested` (a PluginConfig dict).

    Rules, in builder.py's order (Mistral builds as LLaMAForCausalLM, architecture "LlamaForCausalLM"):
      - reduce_fusion off unless tp > 1 on Llama/Gemma2/Medusa; user_buffer off without reduce_fusion;
        norm_quant_fusion off unless NVFP4 on Llama without reduce_fusion.
      - context_fmha off -> FP8 context FMHA and paged context FMHA off.
      - quant algo not FP8/W4A8_AWQ/NVFP4 -> FP8 context FMHA off (and paged context FMHA off with an
        FP8 KV cache).
      - SM < 89 -> FP8 context FMHA off (and paged context FMHA off with an FP8 KV cache).
      - paged context FMHA on: without an FP8 KV cache FP8 context FMHA goes OFF ("FP8 Paged Context
        FMHA is disabled because it must be used together with fp8 KV Cache."); with one it goes ON.
    """
    p = {**PLUGIN_DEFAULTS, **requested}
    fp8_kv = kv_cache_quant_algo == "FP8"
    if p["reduce_fusion"] and (tp_size == 1 or architecture not in (
            "LlamaForCausalLM", "Gemma2ForCausalLM", "MedusaForCausalLM")):
        p["reduce_fusion"] = False
    if p["user_buffer"] and not p["reduce_fusion"]:
        p["user_buffer"] = False
    if p["norm_quant_fusion"] and (p["reduce_fusion"] or architecture != "LlamaForCausalLM"
                                   or quant_algo != "NVFP4"):
        p["norm_quant_fusion"] = False
    if not p["context_fmha"]:
        p["use_fp8_context_fmha"] = p["use_paged_context_fmha"] = False
    elif quant_algo not in FP8_CONTEXT_FMHA_ALGOS or sm < 89:
        p["use_fp8_context_fmha"] = False
        if p["use_paged_context_fmha"] and fp8_kv:
            p["use_paged_context_fmha"] = False
    elif p["use_paged_context_fmha"]:
        p["use_fp8_context_fmha"] = fp8_kv
    return {name: p[name] for name in {*requested, "use_fp8_context_fmha", "use_paged_context_fmha"}}


def predicted_effective(requested_build: dict, quant: dict | None, sm: int = 90, tp_size: int = 1) -> dict:
    """{"build_config": ..., "plugin_config": ..., "quantization": ...} as builder.py would record them.

    requested_build: trtllm_config.build_config() (plugin_config inside); quant: trtllm_config.quant_config().
    build() also forces strongly_typed on for FP8 weights or an FP8 KV cache."""
    quant_algo = (quant or {}).get("quant_algo")
    kv_algo = (quant or {}).get("kv_cache_quant_algo")
    build = {k: v for k, v in requested_build.items() if k != "plugin_config"}
    if quant_algo == "FP8" or kv_algo == "FP8":
        build["strongly_typed"] = True
    plugins = predicted_plugin_config(requested_build.get("plugin_config", {}), quant_algo, kv_algo, sm, tp_size)
    return {"build_config": build, "plugin_config": plugins,
            "quantization": {"quant_algo": quant_algo, "kv_cache_quant_algo": kv_algo}}


# --- reading what was built ------------------------------------------------------------------------

def read_engine_config(engine_dir: str | Path) -> dict:
    """The config.json LLM.save() wrote (Engine.save: version, pretrained_config, build_config)."""
    path = Path(engine_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrtbuildError(f"cannot read the TensorRT-LLM engine config {path} ({exc}); "
                            "rebuild the engine with `trtbuild compile --force`") from None
    if not isinstance(config.get("build_config"), dict) or not isinstance(config.get("pretrained_config"), dict):
        raise TrtbuildError(f"{path} has no build_config/pretrained_config: not an engine LLM.save() wrote; "
                            "rebuild it with `trtbuild compile --force`")
    return config


def effective_settings(config: dict) -> dict:
    """The settings an engine was built with, from its config.json: scalar build_config fields, the
    plugin_config, and the quantization of pretrained_config."""
    build = config["build_config"]
    quant = config["pretrained_config"].get("quantization") or {}
    return {
        "version": config.get("version"),
        "build_config": {k: v for k, v in build.items() if not isinstance(v, (dict, list))},
        "plugin_config": dict(build.get("plugin_config") or {}),
        "quantization": {k: quant.get(k) for k in ("quant_algo", "kv_cache_quant_algo", "exclude_modules")},
    }


def requested_settings(requested_build: dict, quant: dict | None) -> dict:
    """trtbuild's request (build_config() and quant_config()) in effective_settings()' shape."""
    return {"build_config": {k: v for k, v in requested_build.items() if k != "plugin_config"},
            "plugin_config": dict(requested_build.get("plugin_config") or {}),
            "quantization": {"quant_algo": (quant or {}).get("quant_algo"),
                             "kv_cache_quant_algo": (quant or {}).get("kv_cache_quant_algo")}}


def setting_changes(requested: dict, effective: dict) -> list[dict]:
    """[{"setting", "requested", "effective"}] for each requested value the built engine does not have.

    A plugin requested as "auto" matches any dtype (build() resolves it to the model dtype); a setting the
    engine's config.json does not record is not reported (nothing to compare)."""
    changes = []
    for section in ("build_config", "plugin_config", "quantization"):
        built = effective.get(section) or {}
        for name, want in (requested.get(section) or {}).items():
            if name not in built or want == AUTO:
                continue
            if built[name] != want:
                changes.append({"setting": f"{section}.{name}", "requested": want, "effective": built[name]})
    return changes


def describe_change(change: dict) -> str:
    return (f"TensorRT-LLM changed {change['setting']}: requested {change['requested']!r}, "
            f"built {change['effective']!r}")


def can_score(effective: dict | None) -> tuple[bool, str]:
    """Can `trtbuild validate` score this engine (teacher-forced top-1, KL, logprob diff)?

    Scoring reads the context logits of one request over prompt + continuation, which TensorRT-LLM
    returns only for an engine built with gather_context_logits (llm.py _check_arguments)."""
    if not effective:
        return False, "the manifest records no effective TensorRT-LLM settings (engine built by an older trtbuild)"
    if not effective.get("build_config", {}).get("gather_context_logits"):
        return False, ("the engine was built without gather_context_logits, so TensorRT-LLM returns no context "
                       "logits; rebuild it with `trtbuild compile --force`")
    return True, "built with gather_context_logits"


def engine_can_score(engine_dir: str | Path) -> tuple[bool, str]:
    """(can `trtbuild validate` compute the teacher-forced metrics of this engine?, why), from the engine
    directory alone (no GPU, no tensorrt_llm): torch engines always; TensorRT-LLM engines per their config.json."""
    from trtbuild.manifest import load_manifest

    manifest = load_manifest(engine_dir)
    if manifest.backend != "tensorrt-llm":
        return True, f"{manifest.backend} engines are scored by trtbuild's own runtime"
    return can_score(effective_settings(read_engine_config(Path(engine_dir) / "engine")))
