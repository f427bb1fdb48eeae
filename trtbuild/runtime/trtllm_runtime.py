"""The TensorRT-LLM 1.2 runtime: a saved TensorRT engine behind trtbuild's generation interface.

    engine = TrtllmEngine(engine_dir)          # <engine_dir>/engine is what LLM.save() wrote

TensorRT-LLM batches in flight by itself; we only hand it token ids and map its streamed outputs to
RequestStream.emit_token. The engine runs through `tensorrt_llm._tensorrt_engine.LLM` (the TensorRT
backend: the plain `tensorrt_llm.LLM` is the PyTorch backend since 1.0 and cannot load an engine dir,
TRT-LLM #8223), with `generate_async(..., streaming=True)` consumed on an asyncio loop in a background
thread. Everything handed to TensorRT-LLM is computed by plain functions (to_trtllm_sampling_params,
scoring_sampling_params, llm_kwargs) that tests check against the 1.2 field names; tensorrt_llm itself is
imported only here, lazily, and its absence (or a missing GPU) is a one-line TrtbuildError.

score() (teacher-forced log-probabilities, what `trtbuild validate` gates on) is one request over
prompt + continuation with return_context_logits and max_tokens=1: RequestOutput.context_logits holds the
logits of every prompt position (executor/result.py). TensorRT-LLM's prompt_logprobs would not do: it keeps
only the top-k of each position and not the prompt token's own value (result.py compute_logprobs), so
neither KL over the vocabulary nor the reference token's logprob could be computed. Both need an engine built
with gather_context_logits (llm.py _check_arguments), which trtbuild always sets (trtllm_config).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Sequence

from trtbuild.errors import TrtbuildError
from trtbuild.hf_tokenizer import has_hf_tokenizer
from trtbuild.manifest import Manifest, verify_engine
from trtbuild.runtime.guided import TRTLLM_GUIDED_DECODING_BACKEND, trtllm_guided_sampling
from trtbuild.runtime.interface import (ContextLengthExceeded, Engine, EngineError, EngineInfo, RequestStream,
                                        SamplingParams)
from trtbuild.tokenizer import Tokenizer
from trtbuild.trtllm_effective import can_score, effective_settings, read_engine_config

# TensorRT-LLM's CompletionOutput.finish_reason -> ours, for a request that TensorRT-LLM ended itself.
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort", "timeout": "abort"}
DEFAULT_FREE_GPU_MEMORY_FRACTION = 0.85
CLOSE_TIMEOUT_S = 30  # close(): how long requests in flight get to see their abort before shutdown


def to_trtllm_sampling_params(params: SamplingParams, eos_id: int, max_new_tokens: int | None = None) -> dict:
    """Keyword arguments for tensorrt_llm.SamplingParams (1.2) that ask for what `params` asks for.

    - max_tokens is always set (TensorRT-LLM's default is 32), clamped to `max_new_tokens` (the room left
      in max_seq_len: the TensorRT backend rejects prompt + max_tokens > max_seq_len).
    - Greedy is top_k=1, set explicitly. Sampling sets temperature, top_p and top_k (0 = all) explicitly:
      TensorRT-LLM treats "none of them given" as greedy. A missing seed becomes a random one (its
      default seed is 0: every unseeded request would draw the same numbers).
    - Stop strings are NOT passed: RequestStream matches them on the detokenized text (with hold-back,
      across tokens) and we abort the request when it matches, exactly as on the torch backend; passing
      them would need TensorRT-LLM's HF tokenizer, whose encoding differs from mistral-common's.
      stop_token_ids are passed, with include_stop_str_in_output=True so the stop token stays in the
      returned ids and RequestStream ends the request the same way as on every backend.
    - detokenize=False: text comes from our tokenizer (trtbuild.runtime.detok).
    """
    out: dict = {
        "max_tokens": max(1, min(params.max_tokens, max_new_tokens) if max_new_tokens else params.max_tokens),
        "end_id": eos_id,
        "pad_id": eos_id,
        "n": 1,
        "ignore_eos": params.ignore_eos,
        "detokenize": False,
        "include_stop_str_in_output": True,
    }
    if params.greedy:
        out["top_k"] = 1
    else:
        out.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                   seed=params.seed if params.seed is not None else random.SystemRandom().getrandbits(63))
    if params.stop_token_ids:
        out["stop_token_ids"] = list(params.stop_token_ids)
    if params.min_tokens:
        out["min_tokens"] = params.min_tokens
    if params.repetition_penalty != 1:
        out["repetition_penalty"] = params.repetition_penalty
    if params.presence_penalty:
        out["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        out["frequency_penalty"] = params.frequency_penalty
    if params.logprobs or params.top_logprobs:
        out["logprobs"] = max(1, params.top_logprobs)  # top-k per token; the sampled token's is read too
    return out


def scoring_sampling_params(eos_id: int) -> dict:
    """SamplingParams for score(): one greedy token (the request must generate something) and the context
    logits of every prompt position. The request itself is checked like any other: prompt + max_tokens
    must fit max_seq_len (llm.py _check_arguments)."""
    return {"max_tokens": 1, "end_id": eos_id, "pad_id": eos_id, "n": 1, "top_k": 1, "detokenize": False,
            "return_context_logits": True}


def context_logprobs(context_logits, prompt_len: int, continuation_len: int):
    """Teacher-forced log-probabilities from the context logits of prompt + continuation: row i of the
    result is log p(. | prompt + continuation[:i]), i.e. context row prompt_len - 1 + i. Accepts
    [tokens, vocab] or [1, tokens, vocab] (result.py squeezes the same way); returns float32 numpy."""
    import torch

    logits = torch.as_tensor(context_logits)
    if logits.dim() == 3 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.dim() != 2 or logits.shape[0] < prompt_len + continuation_len - 1:
        raise EngineError(f"TensorRT-LLM returned context logits of shape {tuple(logits.shape)} for "
                          f"{prompt_len + continuation_len} tokens")
    rows = logits[prompt_len - 1: prompt_len - 1 + continuation_len].float()
    return torch.log_softmax(rows, dim=-1).cpu().numpy()


def abort_if_running(output) -> bool:
    """Abort a TensorRT-LLM request unless it has finished or was aborted already: GenerationResult.abort
    on a finished request costs a message to the worker and a warning there ("Request of client_id N is
    finished, cannot abort it.", executor/base_worker.py abort_request). Returns True when it aborted."""
    if output is None or output.finished or output.aborted():
        return False
    output.abort()
    return True


def llm_kwargs(engine_dir: Path, build: dict,
               free_gpu_memory_fraction: float = DEFAULT_FREE_GPU_MEMORY_FRACTION) -> tuple[dict, dict]:
    """(LLM keyword arguments, KvCacheConfig keyword arguments) to load a saved engine directory.

    Token ids in, token ids out: our tokenizer (mistral-common) is the one source of ids and text. Guided
    decoding (structured output, forced tool calls) is what needs TensorRT-LLM to load a tokenizer of its
    own, as TensorRT-LLM 1.2 does it:
    - `_TrtLLM._build_model` (tensorrt_llm/llmapi/llm.py@4c05a74891e4df8066f08ed4ce14b0972abe4e25) makes the
      executor's `GuidedDecodingConfig(backend=XGRAMMAR, **_xgrammar_tokenizer_info(self.tokenizer))` when
      `guided_decoding_backend == "xgrammar"`, and raises "Unsupported guided decoding backend" for any
      other value: "llguidance is supported in PyTorch backend only" (llm_args.py, index id 1090804222).
    - `skip_tokenizer_init=True` leaves no tokenizer at all: `BaseLlmArgs.validate_and_init_tokenizer` sets
      it to None (llm_args.py, index id 1090804222) and `BaseLLM._try_load_tokenizer` returns None first
      (llm.py@4c05a748), so xgrammar's tokenizer info cannot be built. With skip_tokenizer_init=False and
      `tokenizer=<dir>`, `tokenizer_factory` loads a TransformersTokenizer from the directory
      (llmapi/tokenizer.py@89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0); `_xgrammar_tokenizer_info` needs it
      to be a PreTrainedTokenizerFast (tokenizer.json): trtbuild.hf_tokenizer writes one into TensorRT-LLM
      engine dirs whose source has none.
    - Loading the tokenizer changes nothing per token: we send `prompt_token_ids` (never tokenized again),
      set end_id (so `_prepare_sampling_params` skips `SamplingParams._setup`, the only other tokenizer
      use), pass no stop strings, and detokenize=False, so `DetokenizedGenerationResultBase._handle_response`
      (executor/result.py, index id 1063746606) decodes nothing: text is still ours, decoded once.
    An engine dir without tokenizer.json (built before trtbuild wrote one) keeps skip_tokenizer_init=True
    and no guided backend: guided requests then get guided_decoding_unavailable()'s 400.
    """
    llm: dict = {
        "model": str(engine_dir),
        # Logprobs on the TensorRT backend are computed from generation logits, which must be gathered.
        "gather_generation_logits": bool(build.get("gather_generation_logits", False)),
    }
    if has_hf_tokenizer(engine_dir):
        llm.update(skip_tokenizer_init=False, tokenizer=str(engine_dir),
                   guided_decoding_backend=TRTLLM_GUIDED_DECODING_BACKEND)
    else:
        llm["skip_tokenizer_init"] = True
    return llm, {"free_gpu_memory_fraction": free_gpu_memory_fraction}


def guided_decoding_unavailable(kwargs: dict, name: str) -> str | None:
    """Why an LLM loaded with `kwargs` cannot run guided requests (one line, for a 400), or None."""
    if kwargs.get("guided_decoding_backend") == TRTLLM_GUIDED_DECODING_BACKEND and kwargs.get("tokenizer"):
        return None
    return (f"structured output and forced tool calls need TensorRT-LLM's xgrammar guided decoding, which "
            f"reads a Hugging Face tokenizer.json that engine {name} does not have; rebuild it with "
            "`trtbuild compile --force` (trtbuild.hf_tokenizer)")


def token_logprob(entry, token_id: int) -> tuple[float | None, list[tuple[int, float]] | None]:
    """One CompletionOutput.logprobs entry ({token: Logprob} or a float) -> (logprob, top alternatives)."""
    if entry is None:
        return None, None
    if isinstance(entry, dict):
        values = {int(t): float(getattr(lp, "logprob", lp)) for t, lp in entry.items()}
        top = sorted(values.items(), key=lambda kv: kv[1], reverse=True)
        return values.get(token_id), top
    return float(entry), None


class TrtllmEngine(Engine):
    def __init__(self, engine_dir: str | Path, manifest: Manifest | None = None,
                 free_gpu_memory_fraction: float = DEFAULT_FREE_GPU_MEMORY_FRACTION):
        from trtbuild.trtllm_backend import require_trtllm

        self.engine_dir = Path(engine_dir)
        require_trtllm()  # one line naming what is missing: tensorrt_llm 1.2 or a GPU
        manifest = manifest or verify_engine(self.engine_dir)
        if manifest.backend != "tensorrt-llm":
            raise TrtbuildError(f"{self.engine_dir.name} is a {manifest.backend} engine, not a TensorRT-LLM one")
        from tensorrt_llm import SamplingParams as TrtSamplingParams
        from tensorrt_llm._tensorrt_engine import LLM
        from tensorrt_llm.llmapi import KvCacheConfig

        trt_dir = self.engine_dir / "engine"
        self._SamplingParams = TrtSamplingParams
        build = manifest.build
        # What the engine was built with (its config.json), not what was asked for: scoring needs context logits.
        self._can_score, self._score_note = can_score(effective_settings(read_engine_config(trt_dir)))
        kwargs, kv_kwargs = llm_kwargs(trt_dir, build, free_gpu_memory_fraction)
        self.llm = LLM(**kwargs, kv_cache_config=KvCacheConfig(**kv_kwargs))
        self.tokenizer = Tokenizer.from_model_dir(trt_dir)
        self._gathers_logits = kwargs["gather_generation_logits"]
        self._guided_note = guided_decoding_unavailable(kwargs, self.engine_dir.name)
        self.info = EngineInfo(
            name=self.engine_dir.name, variant=manifest.variant, backend="tensorrt-llm",
            model_id=str(manifest.source.get("model_id", "")), max_seq_len=int(build["max_seq_len"]),
            max_batch_size=int(build["max_batch_size"]), max_input_len=int(build["max_input_len"]),
            vocab_size=self.tokenizer.vocab_size, eos_id=self.tokenizer.eos_id, precision=dict(manifest.precision),
            engine_dir=str(self.engine_dir), can_score=self._can_score)
        self._streams: dict[str, RequestStream] = {}  # request id -> stream, for every request in flight
        self._handles: dict[str, object] = {}  # request id -> TensorRT-LLM RequestOutput (loop thread only)
        self._tasks: dict[str, object] = {}  # request id -> concurrent Future of its _run coroutine
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trtllm-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
               request_id: str | None = None) -> RequestStream:
        if self._closed:
            raise EngineError(f"engine {self.info.name} is closed")
        if (params.logprobs or params.top_logprobs) and not self._gathers_logits:
            raise ValueError(f"logprobs need an engine built with gather_generation_logits = true; "
                             f"{self.info.name} was not")
        if params.guided is not None and self._guided_note:  # a 400 (server.state.submit)
            raise ValueError(self._guided_note)
        stream = self.new_stream(prompt_ids, params, request_id, on_cancel=self._cancel)
        room = self.info.max_seq_len - len(stream.prompt_token_ids)
        sampling = self._SamplingParams(**to_trtllm_sampling_params(params, self.tokenizer.eos_id, room),
                                        **trtllm_guided_sampling(params, self.info.vocab_size))  # runtime.guided
        self._streams[stream.request_id] = stream
        self._tasks[stream.request_id] = asyncio.run_coroutine_threadsafe(self._run(stream, sampling), self._loop)
        return stream

    def score(self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]):
        if not self._can_score:
            raise NotImplementedError(f"TensorRT-LLM engine {self.info.name} cannot be scored: {self._score_note}")
        if self._closed:
            raise EngineError(f"engine {self.info.name} is closed")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        ids = [*prompt_ids, *continuation_ids]
        if len(ids) > self.info.max_input_len or len(ids) + 1 > self.info.max_seq_len:
            raise ContextLengthExceeded(len(prompt_ids), len(continuation_ids) + 1, self.info.max_seq_len,
                                        self.info.max_input_len)
        sampling = self._SamplingParams(**scoring_sampling_params(self.tokenizer.eos_id))
        logits = asyncio.run_coroutine_threadsafe(self._context_logits(ids, sampling), self._loop).result()
        return context_logprobs(logits, len(prompt_ids), len(continuation_ids))

    async def _context_logits(self, ids: list[int], sampling):
        output = self.llm.generate_async({"prompt_token_ids": ids}, sampling_params=sampling, streaming=False)
        result = await output.aresult()
        if result.context_logits is None:
            raise EngineError(f"TensorRT-LLM returned no context logits for engine {self.info.name}")
        return result.context_logits

    async def _run(self, stream: RequestStream, sampling) -> None:
        output = None
        try:
            stream.mark_scheduled()  # handed to TensorRT-LLM's own in-flight batcher
            output = self.llm.generate_async({"prompt_token_ids": stream.prompt_token_ids}, sampling_params=sampling,
                                             streaming=True)
            self._handles[stream.request_id] = output
            if stream.finished:  # cancelled before it started
                abort_if_running(output)
                return
            seen, completion = 0, None
            async for step in output:
                completion = step.outputs[0]
                new_ids = completion.token_ids[seen:]
                logprobs = (completion.logprobs or [])[seen:]
                for j, token in enumerate(new_ids):
                    logprob, top = token_logprob(logprobs[j] if j < len(logprobs) else None, token)
                    if stream.emit_token(token, logprob, top):
                        break
                seen = len(completion.token_ids)
                if stream.finished:  # a stop string or a cancel: stop TensorRT-LLM's work too (at max_tokens
                    abort_if_running(output)  # TensorRT-LLM has finished the request itself: no abort)
                    break
            if not stream.finished:  # TensorRT-LLM ended it without a token we saw
                reason = getattr(completion, "finish_reason", None)
                stop_reason = getattr(completion, "stop_reason", None)
                if reason == "stop" and stop_reason is None and not stream.params.ignore_eos:
                    # It stopped at end_id, which it does not return: emit it as the other backends do
                    # (same token_ids and usage on every backend; validation compares them token by token).
                    stream.emit_token(self.tokenizer.eos_id)
                else:
                    stream.stop_reason = stop_reason
                    stream.finish(FINISH_REASONS.get(reason, "stop"))
        except Exception as exc:  # TensorRT-LLM raises RequestError and friends per request
            abort_if_running(output)
            stream.finish("error", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._handles.pop(stream.request_id, None)
            self._streams.pop(stream.request_id, None)
            self._tasks.pop(stream.request_id, None)

    def _cancel(self, stream: RequestStream) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: abort_if_running(self._handles.get(stream.request_id)))

    @property
    def num_running(self) -> int:
        return len(self._streams)  # TensorRT-LLM queues internally: everything submitted counts as in flight

    def close(self) -> None:
        """Abort what is in flight, wait until each request has seen its abort, then shut TensorRT-LLM
        down: GenerationResult.abort() needs the executor alive (it dereferences a weakref to it)."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            stream.cancel()  # finish "abort" here; abort() in TensorRT-LLM is scheduled on the loop
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for task in list(self._tasks.values()):  # each _run ends at its next step after the abort
            try:
                task.result(timeout=max(deadline - time.monotonic(), 0.01))
            except Exception:  # a timeout or the request's own error: shut down regardless
                pass
        self.llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CLOSE_TIMEOUT_S)
