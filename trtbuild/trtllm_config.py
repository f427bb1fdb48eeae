"""Plain functions that turn BuildSettings into what TensorRT-LLM 1.2 is handed.

Nothing here imports tensorrt_llm: the outputs are dicts of TensorRT-LLM's own field and flag names,
checked by tests against a fixture of the 1.2 API (tests/fixtures/trtllm_1_2_api.json), and turned into
real objects by trtbuild.trtllm_backend on a machine that has TensorRT-LLM. Every engine manifest
records them (manifest.trtllm), so a user sees exactly what TensorRT-LLM gets.

Two equivalent routes are described:
  - the Python LLM API (what `trtbuild compile --backend tensorrt-llm` runs): llm_args()
  - the command line (convert_checkpoint.py or quantize.py, then trtllm-build): cli_route()
"""

from __future__ import annotations

from pathlib import Path

from trtbuild.errors import TrtbuildError

# PluginConfig's fields in 1.2 (tensorrt_llm/plugin/plugin.py@c20322ff: Pydantic, extra="ignore",
# validate_assignment=True). Its constructor drops unknown names silently; assigning one raises (the path
# trtbuild.trtllm_backend uses). Either way a misspelt option in a profile is caught here, before any GPU work.
PLUGIN_FIELDS = frozenset({
    "dtype", "bert_attention_plugin", "gpt_attention_plugin", "gemm_plugin", "gemm_swiglu_plugin",
    "fp8_rowwise_gemm_plugin", "qserve_gemm_plugin", "identity_plugin", "nccl_plugin", "lora_plugin",
    "dora_plugin", "weight_only_groupwise_quant_matmul_plugin", "weight_only_quant_matmul_plugin",
    "smooth_quant_plugins", "smooth_quant_gemm_plugin", "layernorm_quantization_plugin",
    "rmsnorm_quantization_plugin", "quantize_per_token_plugin", "quantize_tensor_plugin", "moe_plugin",
    "mamba_conv1d_plugin", "low_latency_gemm_plugin", "low_latency_gemm_swiglu_plugin",
    "gemm_allreduce_plugin", "context_fmha", "bert_context_fmha_fp32_acc", "paged_kv_cache",
    "remove_input_padding", "norm_quant_fusion", "reduce_fusion", "user_buffer", "tokens_per_block",
    "use_paged_context_fmha", "use_fp8_context_fmha", "fuse_fp4_quant", "multiple_profiles", "paged_state",
    "streamingllm", "manage_weights", "use_fused_mlp", "pp_reduce_scatter",
})

# Values PluginConfig accepts (its Literal types). None = plugin off; a profile writes it "disable",
# the spelling trtllm-build and PluginConfig's own validator use.
_PLUGIN_DTYPES = ("auto", "float16", "float32", "bfloat16", "int32", None)
PLUGIN_CHOICES = {
    **{name: _PLUGIN_DTYPES for name in (
        "bert_attention_plugin", "gpt_attention_plugin", "fp8_rowwise_gemm_plugin", "qserve_gemm_plugin",
        "identity_plugin", "nccl_plugin", "lora_plugin", "weight_only_groupwise_quant_matmul_plugin",
        "weight_only_quant_matmul_plugin", "smooth_quant_gemm_plugin", "layernorm_quantization_plugin",
        "rmsnorm_quantization_plugin", "moe_plugin", "mamba_conv1d_plugin")},
    "gemm_plugin": ("auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", None),
    "gemm_swiglu_plugin": ("fp8", None),
    "low_latency_gemm_plugin": ("fp8", None),
    "low_latency_gemm_swiglu_plugin": ("fp8", None),
    "gemm_allreduce_plugin": ("float16", "bfloat16", None),
}
PLUGIN_INT_FIELDS = frozenset({"tokens_per_block"})
PLUGIN_STR_FIELDS = frozenset({"dtype"})
PLUGIN_BOOL_FIELDS = PLUGIN_FIELDS - set(PLUGIN_CHOICES) - PLUGIN_INT_FIELDS - PLUGIN_STR_FIELDS

# The plugin options trtllm-build exposes as flags (plugin.py cli_plugin_args).
CLI_PLUGIN_ARGS = frozenset({
    "bert_attention_plugin", "gpt_attention_plugin", "gemm_plugin", "gemm_swiglu_plugin",
    "fp8_rowwise_gemm_plugin", "lora_plugin", "dora_plugin", "moe_plugin", "mamba_conv1d_plugin", "nccl_plugin",
    "low_latency_gemm_plugin", "low_latency_gemm_swiglu_plugin", "gemm_allreduce_plugin", "context_fmha",
    "bert_context_fmha_fp32_acc", "remove_input_padding", "tokens_per_block", "use_paged_context_fmha",
    "use_fp8_context_fmha", "fuse_fp4_quant", "multiple_profiles", "paged_state", "streamingllm",
    "norm_quant_fusion", "reduce_fusion", "user_buffer", "use_fused_mlp", "pp_reduce_scatter",
})

LLM_CLASS = "tensorrt_llm._tensorrt_engine.LLM"  # NOT tensorrt_llm.LLM: that is the PyTorch backend (#8223)
QUANTIZE_PY = "examples/quantization/quantize.py"
CONVERT_CHECKPOINT_PY = "examples/models/core/llama/convert_checkpoint.py"  # Mistral is LLaMAForCausalLM
# Context logits of every prompt token are what `trtbuild validate` scores a TensorRT-LLM engine with
# (teacher-forced top-1, KL, logprob diff): gather_context_logits is on in every engine trtbuild builds, so
# the engine that is validated is the engine that is served. Its cost: the logits output grows from
# [batch, vocab] to [max_num_tokens, vocab] floats (h100 profile: 8192 x 32768 x 4 B = 1 GiB of activation
# memory, taken from the KV cache) and the lm_head GEMM runs over every context token (~2% of a 7B prefill).
GATHER_CONTEXT_LOGITS = True
# The build-only LLM: TensorRT-LLM 1.2's _TrtLLM always starts its executor after building (llm.py@4c05a748
# _build_model), so the engine is loaded once before save(). A KV cache of one max_seq_len sequence (and at
# most 5% of free memory) instead of the default 90% keeps that start small; see build_llm_extras().
BUILD_KV_CACHE_FRACTION = 0.05


def check_plugin_names(plugins: dict, where: str) -> None:
    """Refuse plugin options PluginConfig does not have, or values it does not accept."""
    bad = sorted(set(plugins) - PLUGIN_FIELDS)
    if bad:
        raise TrtbuildError(f"{where}.plugins: unknown TensorRT-LLM plugin option(s) {bad}; "
                            "see PluginConfig in TensorRT-LLM 1.2 for the valid names")
    for name, value in plugins.items():
        if name in PLUGIN_CHOICES:
            ok = _plugin_value(value) in PLUGIN_CHOICES[name]
            allowed = ", ".join(repr(v if v is not None else "disable") for v in PLUGIN_CHOICES[name])
        elif name in PLUGIN_INT_FIELDS:
            ok, allowed = isinstance(value, int) and not isinstance(value, bool) and value > 0, "a positive integer"
        elif name in PLUGIN_STR_FIELDS:
            ok, allowed = isinstance(value, str) and value != "auto", "a dtype name such as 'float16'"
        else:
            ok, allowed = isinstance(value, bool), "true or false"
        if not ok:
            raise TrtbuildError(f"{where}.plugins.{name} = {value!r} is not valid; use {allowed}")


def _plugin_value(value):
    return None if value == "disable" else value


# --- the Python LLM API ----------------------------------------------------------------------------

def plugin_config(settings) -> dict:
    """PluginConfig fields: defaults for Hopper by precision, then the profile's own `plugins` table.

    - gpt_attention_plugin "auto" + context_fmha + paged context FMHA: the fused attention path that
      in-flight batching with a paged KV cache needs (and chunked context relies on).
    - fp16/bf16: gemm_plugin "auto" (cuBLAS GEMM plugin in the model dtype), the usual choice there.
    - fp8: no gemm_plugin, so TensorRT's own FP8 GEMMs run. FP8 context FMHA only with an FP8 KV cache:
      with paged context FMHA on, TensorRT-LLM's build() turns it off without one and on with one
      (trtllm_effective.predicted_plugin_config), so trtbuild asks for exactly what will be built.
      Outputs of FP8 attention have regressed before (TRT-LLM #1305, #2072): validation catches that.
    """
    config = {"gpt_attention_plugin": "auto", "context_fmha": True, "use_paged_context_fmha": True,
              "remove_input_padding": True}
    if settings.is_fp8:
        config.update(gemm_plugin=None, use_fp8_context_fmha=settings.kv_cache_dtype == "fp8")
    else:
        config.update(gemm_plugin="auto", use_fp8_context_fmha=False)
    config.update({name: _plugin_value(value) for name, value in settings.plugins.items()})
    return config


def build_config(settings) -> dict:
    """BuildConfig fields. strongly_typed is required for FP8 and harmless for fp16; gather_context_logits
    makes the engine scoreable (GATHER_CONTEXT_LOGITS)."""
    return {
        "max_batch_size": settings.max_batch_size,
        "max_input_len": settings.max_input_len,
        "max_seq_len": settings.max_seq_len,  # set explicitly: v0.3 has no sliding window to bound it
        "max_num_tokens": settings.max_num_tokens,
        "max_beam_width": settings.max_beam_width,
        "gather_generation_logits": settings.gather_generation_logits,
        "gather_context_logits": GATHER_CONTEXT_LOGITS,
        "strongly_typed": True,
        "plugin_config": plugin_config(settings),
    }


def quant_config(settings) -> dict | None:
    """QuantConfig fields (QuantAlgo member names), or None for an unquantized build.

    No exclude_modules: the LLM API does not forward it (PretrainedModel.quantize calls quantize_and_export
    without it, modeling_utils.py id 1189552800); lm_head stays in the model dtype through
    quantize_and_export's quantize_lm_head=False, and the engine's config.json records what was excluded
    (manifest.trtllm["effective"]["quantization"]).
    """
    if not settings.is_fp8:
        return None
    return {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8" if settings.kv_cache_dtype == "fp8" else None}


def calib_config(settings, calib_dataset: str | None = None) -> dict:
    """CalibConfig fields. TensorRT-LLM hands calib_batches to modelopt as calib_size, a sample count
    (modeling_utils.quantize -> quantize_and_export(calib_size=calib_batches)), so it is num_samples.
    calib_dataset: what trtllm_calib.prepare_calibration() resolved (a local dataset directory for builtin
    and file data); default: the profile's value as written."""
    calib = settings.calibration
    if calib is None:
        raise TrtbuildError(f"variant {settings.variant} has no calibration settings; only FP8 variants calibrate")
    return {
        "device": "cuda",
        "calib_dataset": calib_dataset or calib.dataset,
        "calib_batches": calib.num_samples,
        "calib_batch_size": calib.batch_size,
        "calib_max_seq_length": calib.max_seq_len,
        "random_seed": calib.seed,
        "tokenizer_max_seq_length": max(2048, calib.max_seq_len),
    }


def kv_cache_config(free_gpu_memory_fraction: float = 0.9, enable_block_reuse: bool = True) -> dict:
    """KvCacheConfig for loading an engine: the share of free GPU memory (after weights and
    activations) that the paged KV cache takes; the rest is headroom for the runtime."""
    if not 0 < free_gpu_memory_fraction <= 1:
        raise TrtbuildError(f"free_gpu_memory_fraction must be in (0, 1], got {free_gpu_memory_fraction}")
    return {"free_gpu_memory_fraction": free_gpu_memory_fraction, "enable_block_reuse": enable_block_reuse}


def build_kv_cache_config(settings) -> dict:
    """KvCacheConfig of the build-only LLM: room for one max_seq_len sequence, at most
    BUILD_KV_CACHE_FRACTION of free GPU memory (KvCacheConfig takes the smaller of the two)."""
    return {"free_gpu_memory_fraction": BUILD_KV_CACHE_FRACTION, "max_tokens": settings.max_seq_len,
            "enable_block_reuse": False}


def llm_args(settings, model_dir: str | Path, workspace: str | Path | None = None,
             calib_dataset: str | None = None) -> dict:
    """Keyword arguments of tensorrt_llm._tensorrt_engine.LLM (TrtLlmArgs) that build this variant.

    workspace: where TensorRT-LLM puts its TemporaryDirectory for the quantized checkpoint and the engine
    before save() copies it out (llm.py@4c05a748 BaseLLM.__init__; default $TMPDIR). The nested dicts
    become BuildConfig / QuantConfig / CalibConfig / KvCacheConfig objects in trtllm_backend."""
    args = {
        "model": str(model_dir),
        "dtype": settings.dtype,
        "tensor_parallel_size": settings.tp_size,
        "build_config": build_config(settings),
        "kv_cache_config": build_kv_cache_config(settings),
    }
    if workspace is not None:
        args["workspace"] = str(workspace)
    if settings.is_fp8:  # TensorRT-LLM runs modelopt itself during the build
        args["quant_config"] = quant_config(settings)
        args["calib_config"] = calib_config(settings, calib_dataset)
    return args


# --- the equivalent command line -------------------------------------------------------------------

def _flag(value) -> str:
    """A plugin value as trtllm-build spells it: enable/disable for switches, disable for None."""
    if isinstance(value, bool):
        return "enable" if value else "disable"
    return "disable" if value is None else str(value)


def convert_checkpoint_argv(settings, model_dir: str | Path, output_dir: str | Path) -> list[str]:
    """HF checkpoint -> TensorRT-LLM checkpoint in the model dtype (the fp16/bf16 route)."""
    return ["python", CONVERT_CHECKPOINT_PY, "--model_dir", str(model_dir), "--output_dir", str(output_dir),
            "--dtype", settings.dtype, "--tp_size", str(settings.tp_size), "--workers", str(settings.tp_size)]


def quantize_py_argv(settings, model_dir: str | Path, output_dir: str | Path) -> list[str]:
    """HF checkpoint -> FP8 TensorRT-LLM checkpoint with modelopt (the fp8 / fp8-kv8 route).

    quantize.py and the LLM API reach the same get_calib_dataloader (quantize_by_modelopt.py), so the same
    datasets work on both routes: see trtbuild.trtllm_calib (TRT-LLM #5247 reports an older quantize.py
    that ignored local sets)."""
    calib = settings.calibration
    argv = ["python", QUANTIZE_PY, "--model_dir", str(model_dir), "--dtype", settings.dtype, "--qformat", "fp8"]
    if settings.kv_cache_dtype == "fp8":
        argv += ["--kv_cache_dtype", "fp8"]
    return argv + [
        "--calib_dataset", calib.dataset, "--calib_size", str(calib.num_samples),
        "--batch_size", str(calib.batch_size), "--calib_max_seq_length", str(calib.max_seq_len),
        "--tokenizer_max_seq_length", str(max(2048, calib.max_seq_len)), "--seed", str(calib.seed),
        "--tp_size", str(settings.tp_size), "--output_dir", str(output_dir),
    ]


def trtllm_build_argv(settings, checkpoint_dir: str | Path, output_dir: str | Path) -> list[str]:
    """The trtllm-build command line equal to build_config(). Plugin options that trtllm-build has no
    flag for (e.g. manage_weights) exist only on the LLM API route."""
    argv = ["trtllm-build", "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(output_dir),
            "--max_batch_size", str(settings.max_batch_size), "--max_input_len", str(settings.max_input_len),
            "--max_seq_len", str(settings.max_seq_len), "--max_num_tokens", str(settings.max_num_tokens),
            "--max_beam_width", str(settings.max_beam_width), "--workers", str(settings.tp_size)]
    if settings.gather_generation_logits:
        argv.append("--gather_generation_logits")
    if GATHER_CONTEXT_LOGITS:
        argv.append("--gather_context_logits")
    for name, value in plugin_config(settings).items():
        if name in CLI_PLUGIN_ARGS:
            argv += [f"--{name}", _flag(value)]
    return argv


def cli_route(settings, model_dir: str | Path, work_dir: str | Path = ".") -> list[list[str]]:
    """The two commands that build the same engine from the shell: checkpoint, then trtllm-build."""
    checkpoint, engine = Path(work_dir) / "checkpoint", Path(work_dir) / "engine"
    make_checkpoint = quantize_py_argv if settings.is_fp8 else convert_checkpoint_argv
    return [make_checkpoint(settings, model_dir, checkpoint), trtllm_build_argv(settings, checkpoint, engine)]


def trtllm_summary(settings, model_dir: str | Path, workspace: str | Path | None = None,
                   calib_dataset: str | None = None) -> dict:
    """Everything TensorRT-LLM is (or would be) handed for this variant, and what its build rules will
    make of it (predicted): recorded in every manifest. A TensorRT-LLM build adds "effective" (read back
    from the engine) and "changed"."""
    from trtbuild.trtllm_effective import predicted_effective

    args = llm_args(settings, model_dir, workspace, calib_dataset)
    nested = ("build_config", "quant_config", "calib_config", "kv_cache_config")
    return {
        "api": f"{LLM_CLASS} (TensorRT-LLM 1.2)",
        "llm_args": {k: v for k, v in args.items() if k not in nested},
        "build_config": args["build_config"],
        "quant_config": args.get("quant_config"),
        "calib_config": args.get("calib_config"),
        "kv_cache_config": args["kv_cache_config"],
        "predicted": predicted_effective(args["build_config"], args.get("quant_config"), tp_size=settings.tp_size),
        "cli": cli_route(settings, model_dir),
    }
