"""Running engines: one interface (interface.py), two backends, and the transformers reference.

    from trtbuild.runtime import load_engine, SamplingParams
    with load_engine(engine_dir) as engine:
        print(engine.generate([prompt_ids], SamplingParams(max_tokens=32, temperature=0))[0].text)

Backends are imported only when an engine of their kind is loaded (TensorRT-LLM may not be installed).
"""

from __future__ import annotations

from pathlib import Path

from trtbuild.runtime.interface import (ContextLengthExceeded, Engine, EngineError, EngineInfo, GenerationResult,
                                        RequestStream, SamplingParams, TokenEvent)

__all__ = ["load_engine", "load_reference", "Engine", "EngineInfo", "EngineError", "GenerationResult",
           "RequestStream", "SamplingParams", "TokenEvent", "ContextLengthExceeded"]


def load_engine(engine_dir: str | Path, device: str | None = None) -> Engine:
    """Verify an engine directory's manifest and load it with the runtime of the backend that built it."""
    from trtbuild.errors import TrtbuildError
    from trtbuild.manifest import verify_engine

    manifest = verify_engine(engine_dir)
    if manifest.backend == "torch":
        from trtbuild.runtime.torch_runtime import TorchEngine

        return TorchEngine(engine_dir, device=device, manifest=manifest)
    if manifest.backend == "tensorrt-llm":
        from trtbuild.runtime.trtllm_runtime import TrtllmEngine

        return TrtllmEngine(engine_dir, manifest=manifest)
    raise TrtbuildError(f"engine {Path(engine_dir).name} has unknown backend {manifest.backend!r}; "
                        "rebuild it with `trtbuild compile`")


def load_reference(model_dir: str | Path, device: str | None = None, max_seq_len: int | None = None):
    """The transformers reference (sequential, FP32 on CPU) for a Hugging Face checkpoint directory."""
    from trtbuild.runtime.hf_reference import HFReferenceEngine

    return HFReferenceEngine(model_dir, device=device, max_seq_len=max_seq_len)
