"""TEST DOUBLE of the executor: results (executor/result.py, index id 1063746606, 1.2 line) and a worker.

Mirrored behaviour:
- RequestOutput: `outputs[0]` is a CompletionOutput whose token_ids are EXTENDED by each response
  (cumulative; token_ids_diff is the new part) and whose logprobs grow by `+=` on the TRT backend
  (`output.logprobs += logprobs_result.generation`); entries are {token_id: Logprob(logprob, rank)} holding
  the top-k and the sampled token (compute_logprobs). finish_reason is set on the final response only:
  'stop' (end_id or stop words), 'length', 'cancelled'. The end_id token is not part of token_ids; a stop
  token is, with include_stop_str_in_output (else it is trimmed). context_logits [prompt_len, vocab] is set
  when return_context_logits was asked for. `finished` is the `_done` flag; `__aiter__`/`__anext__` yield
  the result after each response; `aresult()` waits for the final one; results are queued on the event loop
  that was running when the request was made (AsyncQueue), else on a thread queue.
- abort(): `self._executor().abort_request(id)` through a weakref, so it fails (TypeError) once the
  executor is gone. The worker's abort_request (executor/base_worker.py, index ids 51807206653, 2646354960)
  logs "Request of client_id {id} is finished, cannot abort it." for a request no longer in flight:
  recorded in EVENTS as ("abort_finished", id) so tests can count them.
- Guided decoding (see llmapi/llm.py): the worker masks a guided request's logits with llguidance over the
  LLM's Hugging Face tokenizer and feeds it each sampled token.
- The worker steps every request in flight in turn (in-flight batching, one token per request per step)
  on a transformers Mistral model on CPU. Penalties and beam search are not modelled. Unlike the real
  executor (which loads the engine when it starts), the double loads its model on the first request, so a
  build-only LLM stays cheap in the test suite; torch is imported only then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import weakref
from typing import Optional

logger = logging.getLogger("tensorrt_llm")
EVENTS: list[tuple[str, object]] = []  # what the double did that a test may want to count


@dataclasses.dataclass(slots=True)
class Logprob:
    logprob: float
    rank: Optional[int] = None


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list = dataclasses.field(default_factory=list)
    cumulative_logprob: Optional[float] = None
    logprobs: list = dataclasses.field(default_factory=list)
    prompt_logprobs: list = dataclasses.field(default_factory=list)
    finish_reason: Optional[str] = None
    stop_reason: object = None
    generation_logits: object = None
    _last_token_ids_len: int = 0
    _last_logprobs_len: int = 0

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def token_ids_diff(self) -> list:
        return self.token_ids[self._last_token_ids_len:]

    @property
    def logprobs_diff(self) -> list:
        return self.logprobs[self._last_logprobs_len:]


@dataclasses.dataclass
class Response:
    new_token_ids: list
    logprobs: Optional[list]  # entries for the new tokens (TRT backend: computed per response)
    final: bool
    finish_reason: Optional[str] = None  # 'stop' | 'length' | 'cancelled'
    stop_reason: object = None
    context_logits: object = None


class RequestOutput:
    def __init__(self, request_id: int, prompt_token_ids: list, sampling_params, executor, tokenizer=None):
        self.request_id, self.prompt_token_ids, self.sampling_params = request_id, list(prompt_token_ids), sampling_params
        self.tokenizer = tokenizer
        self.outputs = [CompletionOutput(0)]
        self.context_logits = None
        self._done = self._aborted = False
        self._executor = weakref.ref(executor)
        try:
            self._loop = asyncio.get_running_loop()
            self._aqueue: asyncio.Queue = asyncio.Queue()
        except RuntimeError:
            self._loop, self._queue = None, queue.Queue()

    def _post(self, response: Response) -> None:  # worker thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._aqueue.put_nowait, response)
        else:
            self._queue.put(response)

    def _handle(self, r: Response) -> None:
        out = self.outputs[0]
        out._last_token_ids_len = len(out.token_ids)
        out.token_ids.extend(r.new_token_ids)
        if r.logprobs is not None:
            out._last_logprobs_len = len(out.logprobs)
            out.logprobs += r.logprobs
        if r.context_logits is not None:
            self.context_logits = r.context_logits
        self._done = r.final
        if r.final:
            out.finish_reason, out.stop_reason = r.finish_reason, r.stop_reason
        if self.sampling_params.detokenize and self.tokenizer is not None:  # DetokenizedGenerationResultBase
            out.text = self.tokenizer.decode(out.token_ids)
            EVENTS.append(("detokenize", self.request_id))

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        self._executor().abort_request(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration
        self._handle(await self._aqueue.get())
        return self

    async def aresult(self):
        while not self._done:
            self._handle(await self._aqueue.get())
        return self

    def result(self, timeout: float | None = None):
        while not self._done:
            self._handle(self._queue.get(timeout=timeout))
        return self


class _Request:
    def __init__(self, output: RequestOutput, end_id: int):
        self.output, self.end_id, self.cache, self.generated = output, end_id, None, 0
        self.cancelled = False
        self.generator = None  # made on the worker thread (torch is imported there)
        self.matcher = None  # the guide's grammar matcher (llguidance), made on the worker thread


class Worker:
    """Runs requests in flight on `model` (a transformers causal LM) in one thread."""

    def __init__(self, load_model, gather_context_logits: bool, guided=None):
        self._load_model, self.model, self.gather_context_logits = load_model, None, gather_context_logits
        self.guided = guided  # (Hugging Face tokenizer, stop token ids): the GuidedDecodingConfig, or None
        self._llg_tokenizer = None
        self._active: dict[int, _Request] = {}
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="trtllm-double-worker", daemon=True)
        self._thread.start()

    def submit(self, output: RequestOutput) -> None:
        sp = output.sampling_params
        with self._cv:
            self._active[output.request_id] = _Request(output, -1 if sp.ignore_eos else sp.end_id)
            self._cv.notify()

    def abort_request(self, client_id: int) -> None:
        with self._cv:
            request = self._active.get(client_id)
            if request is None:
                logger.warning(f"Request of client_id {client_id} is finished, cannot abort it.")
                EVENTS.append(("abort_finished", client_id))
                return
            EVENTS.append(("abort", client_id))
            request.cancelled = True
            self._cv.notify()

    def shutdown(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=30)
        EVENTS.append(("shutdown", len(self._active)))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._active and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                batch = list(self._active.items())
            if self.model is None:
                import torch

                torch.set_num_threads(1)
                self.model = self._load_model()
            for client_id, request in batch:
                response = self._step(request)
                if response.final:
                    with self._cv:
                        self._active.pop(client_id, None)
                request.output._post(response)

    def _step(self, r: _Request) -> Response:
        import torch

        with torch.inference_mode():
            return self._step_request(r, torch)

    def _step_request(self, r: _Request, torch) -> Response:
        sp = r.output.sampling_params
        if r.cancelled:
            return Response([], None, True, "cancelled")
        if r.generator is None:
            r.generator = torch.Generator().manual_seed(int(sp.seed or 0))  # seed None = the C++ default 0
        if r.cache is None:  # context phase: the whole prompt at once
            ids = torch.tensor([r.output.prompt_token_ids])
            out = self.model(input_ids=ids, use_cache=True)
            context = out.logits[0].float().clone() if sp.return_context_logits else None
        else:
            out = self.model(input_ids=torch.tensor([[r.last]]), past_key_values=r.cache, use_cache=True)
            context = None
        r.cache = out.past_key_values
        logits = out.logits[0, -1].float()
        if r.generated < (sp.min_tokens or 0) and r.end_id >= 0:
            logits[r.end_id] = -float("inf")
        if sp.embedding_bias is not None:  # [vocab_size] float32, added to the logits
            logits += sp.embedding_bias.to(logits.dtype)
        if sp.guided_decoding is not None:
            self._mask(r, logits)
        token = self._sample(logits, sp, r.generator)
        if r.matcher is not None:
            r.matcher.consume_token(token)
        r.generated += 1
        r.last = token
        logprobs = _top_logprobs(logits, sp.logprobs, token) if sp.logprobs else None
        if token == r.end_id:  # end_id ends the request and is not returned
            return Response([], None if logprobs is None else [], True, "stop", None, context)
        if token in (sp.stop_token_ids or []):
            kept = [token] if sp.include_stop_str_in_output else []
            return Response(kept, logprobs if kept else (None if logprobs is None else []), True, "stop", token, context)
        final = r.generated >= sp.max_tokens
        return Response([token], logprobs, final, "length" if final else None, None, context)

    def _mask(self, r: _Request, logits) -> None:
        """Only the tokens the guide allows next (the stop token once it is complete)."""
        import json

        import llguidance
        import llguidance.hf
        import numpy as np

        if r.matcher is None:
            if self._llg_tokenizer is None:
                tokenizer, stop_ids = self.guided
                self._llg_tokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=stop_ids[0])
            guide = r.output.sampling_params.guided_decoding
            compact = {"whitespace_pattern": "[ ]?"}
            if guide.json is not None:
                schema = guide.json if isinstance(guide.json, str) else json.dumps(guide.json)
                grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=compact)
            elif guide.json_object:
                grammar = llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=compact)
            elif guide.regex is not None:
                grammar = llguidance.LLMatcher.grammar_from_regex(guide.regex)
            else:
                raise NotImplementedError("(test double) EBNF grammars and structural tags are not modelled")
            r.matcher = llguidance.LLMatcher(self._llg_tokenizer, grammar)
            EVENTS.append(("guided", r.output.request_id))
        bits = np.unpackbits(np.frombuffer(r.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = bits[: logits.numel()].astype(bool)
        import torch

        mask = torch.zeros(logits.numel(), dtype=torch.bool)
        mask[: len(allowed)] = torch.from_numpy(allowed)
        logits.masked_fill_(~mask, float("-inf"))

    @staticmethod
    def _sample(logits, sp, generator) -> int:
        import torch

        if sp.params_imply_greedy_decoding():
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / max(sp.temperature or 1.0, 1e-6), dim=-1)
        if sp.top_k:  # 0 / None = all logits (the C++ default)
            kth = torch.topk(probs, sp.top_k).values[-1]
            probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        if sp.top_p is not None and sp.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            drop = torch.cumsum(sorted_probs, 0) - sorted_probs > sp.top_p * probs.sum()
            probs[order[drop]] = 0
        return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def _top_logprobs(logits, k: int, token: int) -> list:
    """compute_logprobs (result.py): top-k {id: Logprob(logprob, rank)}, plus the sampled token if outside."""
    import torch

    logprobs = torch.log_softmax(logits, dim=-1)
    values, ids = torch.topk(logprobs, k)
    entry = {int(i): Logprob(float(v), rank + 1) for rank, (v, i) in enumerate(zip(values, ids))}
    if token not in entry:
        entry[token] = Logprob(float(logprobs[token]), int((logprobs > logprobs[token]).sum()) + 1)
    return [entry]
