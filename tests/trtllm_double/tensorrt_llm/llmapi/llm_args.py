"""TEST DOUBLE of the argument classes of the 1.2 LLM API.

- QuantAlgo: an Enum (tensorrt_llm/quantization/mode.py); members: the fixture's list.
- QuantConfig: the dataclass of tensorrt_llm/models/modeling_utils.py (index id 1189552800): unknown
  keywords are a TypeError.
- CalibConfig, KvCacheConfig: StrictBaseModel (extra fields forbidden) in llmapi/llm_args.py (index ids
  1090804222 and 7019226376); CalibConfig.device is Literal["cuda", "cpu"]; KvCacheConfig.free_gpu_memory_
  fraction defaults to 0.9 and must lie in [0, 1]; KvCacheConfig.dtype must stay "auto" on the TensorRT
  backend (TrtLlmArgs.validate_kv_cache_dtype).
- TRT_LLM_ARGS: the TrtLlmArgs field names BaseLLM.__init__ accepts ("got invalid argument" otherwise).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

_API = json.loads((Path(__file__).parents[3] / "fixtures" / "trtllm_1_2_api.json").read_text())["sections"]

QuantAlgo = enum.Enum("QuantAlgo", {name: name for name in _API["QuantAlgo"]["members"]}, type=str)
TRT_LLM_ARGS = frozenset(_API["TrtLlmArgs"]["fields"])


@dataclasses.dataclass
class QuantConfig:
    quant_algo: Optional[QuantAlgo] = None
    kv_cache_quant_algo: Optional[QuantAlgo] = None
    group_size: int = 128
    smoothquant_val: float = 0.5
    clamp_val: Optional[list] = None
    use_meta_recipe: bool = False
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: Optional[list] = None
    mamba_ssm_cache_dtype: Optional[str] = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_dict(self) -> dict:
        return self.model_dump()


class CalibConfig(_Strict):
    device: Literal["cuda", "cpu"] = "cuda"
    calib_dataset: str = "cnn_dailymail"
    calib_batches: int = 512
    calib_batch_size: int = 1
    calib_max_seq_length: int = 512
    random_seed: int = 1234
    tokenizer_max_seq_length: int = 2048


class KvCacheConfig(_Strict):
    enable_block_reuse: bool = True
    max_tokens: Optional[int] = None
    max_attention_window: Optional[list] = None
    sink_token_length: Optional[int] = None
    free_gpu_memory_fraction: Optional[float] = Field(default=0.9, ge=0, le=1)
    host_cache_size: Optional[int] = None
    onboard_blocks: bool = True
    cross_kv_cache_fraction: Optional[float] = None
    secondary_offload_min_priority: Optional[int] = None
    event_buffer_max_size: int = 0
    enable_partial_reuse: bool = True
    copy_on_partial_reuse: bool = True
    use_uvm: bool = False
    max_gpu_total_bytes: int = 0
    dtype: str = "auto"
    mamba_ssm_cache_dtype: str = "auto"
    tokens_per_block: int = 32
