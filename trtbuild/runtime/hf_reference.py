"""The Hugging Face transformers reference, behind the same generation interface as every engine.

Deliberately plain: one request at a time, transformers' own MistralForCausalLM and KV cache, FP32 on
CPU (BF16 on a GPU). Validation compares engines with this; it is never benchmarked as an engine.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Sequence

import torch

from trtbuild.runtime.interface import Engine, EngineInfo, RequestStream, SamplingParams
from trtbuild.runtime.guided import grammar_processors
from trtbuild.runtime.sampling import Sampler
from trtbuild.tokenizer import Tokenizer


def reference_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


class HFReferenceEngine(Engine):
    def __init__(self, model_dir: str | Path, device: str | None = None, dtype: torch.dtype | None = None,
                 max_seq_len: int | None = None, name: str | None = None):
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or reference_dtype(self.device)
        self.model_dir = Path(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, torch_dtype=self.dtype)
        self.model.to(self.device).eval()
        self.tokenizer = Tokenizer.from_model_dir(self.model_dir)
        cfg = self.model.config
        seq = max_seq_len or cfg.max_position_embeddings
        self.info = EngineInfo(
            name=name or f"reference:{self.model_dir.name}", variant="reference", backend="transformers",
            model_id=str(self.model_dir), max_seq_len=seq, max_batch_size=1, max_input_len=seq - 1,
            vocab_size=cfg.vocab_size, eos_id=self.tokenizer.eos_id,
            precision={"weights": str(self.dtype).removeprefix("torch."),
                       "activations": str(self.dtype).removeprefix("torch."), "kv_cache": str(self.dtype).removeprefix("torch.")},
            engine_dir=str(self.model_dir), can_score=True)
        self._queue: queue.Queue[RequestStream | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="hf-reference", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
               request_id: str | None = None) -> RequestStream:
        stream = self.new_stream(prompt_ids, params, request_id)
        self._queue.put(stream)
        return stream

    @property
    def num_waiting(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    @torch.inference_mode()
    def score(self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]):
        ids = torch.tensor([list(prompt_ids) + list(continuation_ids)], device=self.device)
        n = len(continuation_ids)  # lm_head only where a continuation token is predicted: 2-3x faster
        logits = self.model(ids, logits_to_keep=n + 1).logits[0, :n].float()
        return torch.log_softmax(logits, dim=-1).cpu().numpy()

    def _loop(self) -> None:
        while (stream := self._queue.get()) is not None:
            if stream.finished:  # cancelled while waiting
                continue
            try:
                self._run(stream)
            except Exception as exc:  # one bad request must not kill the engine
                stream.finish("error", error=f"{type(exc).__name__}: {exc}")
        while not self._queue.empty():  # closing: end whatever still waits
            if (leftover := self._queue.get_nowait()) is not None:
                leftover.finish("abort")

    @torch.inference_mode()
    def _run(self, stream: RequestStream) -> None:
        stream.mark_scheduled()
        sampler = Sampler(self.model.config.vocab_size, self.tokenizer.eos_id, capacity=1)
        state = sampler.start(stream.params, stream.prompt_token_ids, row=0)
        state.processors += grammar_processors(stream.params, self.tokenizer)
        ids = torch.tensor([stream.prompt_token_ids], device=self.device)
        out = self.model(ids, use_cache=True)
        while True:
            picked, = sampler.sample(out.logits[:, -1].float().cpu(), [state])
            if isinstance(picked, Exception):
                raise picked
            token, logprob, top = picked
            if stream.emit_token(token, logprob, top) or stream.finished:
                return
            out = self.model(torch.tensor([[token]], device=self.device), past_key_values=out.past_key_values,
                             use_cache=True)
