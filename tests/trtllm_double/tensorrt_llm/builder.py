"""TEST DOUBLE of tensorrt_llm/builder.py: BuildConfig, the build-time setting rules, Engine.save's layout.

- BuildConfig: a Pydantic model with extra fields forbidden, as 1.2 ships it (PR #8330, merged Oct 2025).
  No stored copy of that file could be read; the field names are the last dataclass BuildConfig's
  (builder.py, index id 205252225) without auto_parallel_config, which that version had already removed.
- apply_build_rules: the setting changes of build() in builder.py (index id 205252225), each logged as a
  warning with TensorRT-LLM's own message: plugin dtype = model dtype; strongly_typed for FP8; the
  context-FMHA chain (FP8 context FMHA off without an FP8 KV cache when paged context FMHA is on, etc.).
- save_engine: Engine.save: config.json {version, pretrained_config, build_config} written by rank 0 and
  one rank{r}.engine per rank. Here rank0.engine is a safetensors file of weights, NOT a TensorRT plan.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from tensorrt_llm.plugin import PluginConfig

logger = logging.getLogger("tensorrt_llm")


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_input_len: int = 1024
    max_seq_len: Optional[int] = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: Optional[int] = None
    max_prompt_embedding_table_size: int = 0
    kv_cache_type: Optional[str] = None
    gather_context_logits: bool = False
    gather_generation_logits: bool = False
    strongly_typed: bool = True
    force_num_profiles: Optional[int] = None
    profiling_verbosity: str = "layer_names_only"
    enable_debug_output: bool = False
    max_draft_len: int = 0
    speculative_decoding_mode: str = "NONE"
    use_refit: bool = False
    input_timing_cache: Optional[str] = None
    output_timing_cache: Optional[str] = "model.cache"
    lora_config: dict = Field(default_factory=dict)
    weight_sparsity: bool = False
    weight_streaming: bool = False
    plugin_config: PluginConfig = Field(default_factory=PluginConfig)
    use_strip_plan: bool = False
    max_encoder_input_len: int = 1024
    dry_run: bool = False
    visualize_network: Optional[str] = None
    monitor_memory: bool = False
    use_mrope: bool = False

    def to_dict(self) -> dict:
        return self.model_dump()


def apply_build_rules(pretrained: dict, build: BuildConfig, sm: int = 90) -> BuildConfig:
    """The changes builder.py build() makes to a copy of the build config before building."""
    build = build.model_copy(deep=True)
    plugins, quant = build.plugin_config, pretrained.get("quantization") or {}
    quant_algo, kv_algo = quant.get("quant_algo"), quant.get("kv_cache_quant_algo")
    fp8_kv = kv_algo == "FP8"
    plugins.dtype = pretrained["dtype"]
    if build.max_seq_len is None:  # _init_max_seq_len
        build.max_seq_len = pretrained["max_position_embeddings"]
    if quant_algo == "FP8" or kv_algo == "FP8":
        build.strongly_typed = True
    if not plugins.context_fmha:
        plugins.use_fp8_context_fmha = False
        plugins.use_paged_context_fmha = False
        logger.warning("Context FMHA is disabled, FP8 Context FMHA and Paged Context FMHA are disabled.")
    elif quant_algo not in ("FP8", "W4A8_AWQ", "NVFP4"):
        if plugins.use_fp8_context_fmha:
            plugins.use_fp8_context_fmha = False
            logger.warning("FP8 Context FMHA is disabled because it must be used together with the fp8 "
                           "quantization workflow.")
        if plugins.use_paged_context_fmha and fp8_kv:
            plugins.use_paged_context_fmha = False
            logger.warning("FP8 Paged Context FMHA is disabled because FP8 context FMHA is disabled.")
    elif sm < 89:
        plugins.use_fp8_context_fmha = False
        logger.warning("FP8 context FMHA is disabled because it is only supported on Ada and Hopper Arch.")
    elif plugins.use_paged_context_fmha:
        if not fp8_kv and plugins.use_fp8_context_fmha:
            plugins.use_fp8_context_fmha = False
            logger.warning("FP8 Paged Context FMHA is disabled because it must be used together with fp8 KV Cache.")
        elif fp8_kv and not plugins.use_fp8_context_fmha:
            plugins.use_fp8_context_fmha = True
            logger.warning("FP8 Context FMHA is enabled to support FP8 Paged Context FMHA.")
    return build


def save_engine(engine_dir: Path, pretrained: dict, build: BuildConfig, weights: dict, version: str) -> None:
    """Engine.save: config.json (rank 0) and rank{r}.engine; the double has one rank."""
    from safetensors.numpy import save_file

    engine_dir.mkdir(parents=True, exist_ok=True)
    config = {"version": version, "pretrained_config": pretrained, "build_config": build.to_dict()}
    (engine_dir / "config.json").write_text(json.dumps(config, indent=4))
    save_file(weights, str(engine_dir / "rank0.engine"), metadata={"format": "trtllm-test-double"})
