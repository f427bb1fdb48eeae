"""Plain functions that turn BuildSettings into what TensorRT-LLM 1.2 is handed.

Nothing here imports tensorrt_llm: the outputs are dicts of TensorRT-LLM's own field and flag names,
checked by tests against a fixture of the 1.2 API (tests/fixtures/trtllm_1_2_api.json), and turned into
real objects by trtbuild.trtllm_backend on a machine that has TensorRT-LLM.
"""

from __future__ import annotations

from trtbuild.errors import TrtbuildError

# PluginConfig's fields in 1.2 (tensorrt_llm/plugin/plugin.py). PluginConfig ignores unknown names
# silently (extra="ignore"), so a misspelt plugin option in a profile would never raise: check here.
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


def check_plugin_names(plugins: dict, where: str) -> None:
    bad = sorted(set(plugins) - PLUGIN_FIELDS)
    if bad:
        raise TrtbuildError(f"{where}.plugins: unknown TensorRT-LLM plugin option(s) {bad}; "
                            "see PluginConfig in TensorRT-LLM 1.2 for the valid names")
