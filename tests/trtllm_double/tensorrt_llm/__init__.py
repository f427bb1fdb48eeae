"""TEST DOUBLE of tensorrt_llm 1.2 (see ../README.md): not TensorRT-LLM, builds no TensorRT engine.

Mirrors tensorrt_llm/__init__.py (index id 3972952636): `from .builder import BuildConfig`, `from .llmapi
import LLM` (the PyTorch-backend LLM: the double does not provide it, TRT-LLM #8223), `SamplingParams`.
"""

from tensorrt_llm.builder import BuildConfig
from tensorrt_llm.sampling_params import SamplingParams

__version__ = "1.2.0"
IS_TEST_DOUBLE = True  # trtbuild's tests assert this before trusting anything below

__all__ = ["BuildConfig", "SamplingParams", "__version__"]
