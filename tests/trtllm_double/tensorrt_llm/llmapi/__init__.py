"""TEST DOUBLE. Mirrors tensorrt_llm/llmapi/__init__.py@5ca85aff (the names trtbuild imports)."""

from tensorrt_llm.builder import BuildConfig
from tensorrt_llm.llmapi.llm_args import CalibConfig, KvCacheConfig, QuantAlgo, QuantConfig
from tensorrt_llm.sampling_params import SamplingParams

__all__ = ["BuildConfig", "CalibConfig", "KvCacheConfig", "QuantAlgo", "QuantConfig", "SamplingParams"]
