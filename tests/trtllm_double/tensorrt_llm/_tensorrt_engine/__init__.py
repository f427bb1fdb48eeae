"""TEST DOUBLE. Mirrors tensorrt_llm/_tensorrt_engine/__init__.py@cd8f10df: the TensorRT-backend LLM."""

from tensorrt_llm.llmapi.llm import _TrtLLM as LLM

__all__ = ["LLM"]
