"""The torch backend runtime: runs `torch` engine directories with a small continuous-batching loop.

    engine = TorchEngine(engine_dir)       # or trtbuild.runtime.load_engine(engine_dir)
    stream = engine.submit(prompt_ids, SamplingParams(max_tokens=32, temperature=0))

How it works (gpt-fast style: the loop and the forward are in this file, each piece it calls is short):
- Weights load into plain-torch Mistral modules (trtbuild.runtime.mistral: transformers' parameter names
  and math, without its import cost); FP8 checkpoints get FP8Linear layers (trtbuild.runtime.fp8).
  Attention here runs over our own KV cache.
- The KV cache (trtbuild.runtime.kv_cache) is preallocated: [layers, max_batch_size, kv_heads,
  max_seq_len, head_dim] for keys and for values, one slot per running request. Each step writes the new
  keys/values at the request's positions, then attends over cache[slot, :, :max_len] with a mask that hides
  every position past the request's own length, so requests of different lengths share one batched
  forward. With an FP8 KV cache the cache tensors are float8_e4m3fn and hold round(k / k_scale), as an FP8
  KV cache stores them.
- A background thread loops: admit waiting requests into free slots (up to max_batch_size), prefill
  them together (right-padded, their first token comes from their last prompt position), then one
  batched decode step for every running request. Finished or cancelled requests free their slot at the
  next step. Running requests are kept in slot order, so when their slots are contiguous (the common
  case) each layer attends over a view of the cache instead of a gathered copy.
- Sampling is one batched pass over the step's logits (trtbuild.runtime.sampling), with counter-based
  per-request seeds, so a request's tokens do not depend on what else is in the batch.
- The step's widest matmul, the LM head (trtbuild.runtime.lm_head: blocks of vocabulary columns), is
  shared with a helper thread on a second CPU (trtbuild.runtime.split); when every row samples plainly
  (temperature only), the draw's work runs on each block as it is computed (trtbuild.runtime.draw).
  Everything else runs on the engine thread with one torch thread.
- Compute dtype: float32 on CPU (CPU float16 matmuls are slow and lossy), the weights' dtype on CUDA.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from trtbuild.errors import TrtbuildError
from trtbuild.manifest import Manifest, verify_engine
from trtbuild.runtime.lm_head import LMHead
from trtbuild.runtime.split import SplitRunner
from trtbuild.runtime.interface import (ContextLengthExceeded, Engine, EngineError, EngineInfo, RequestStream,
                                        SamplingParams, batched_wakeups)
from trtbuild.runtime.guided import grammar_processors
from trtbuild.runtime.kv_cache import KVCache
from trtbuild.runtime.mistral import load_checkpoint
from trtbuild.runtime.sampling import Sampler, SamplerState
from trtbuild.tokenizer import Tokenizer

PREFILL_GROUP_TOKENS_CPU = 512  # see TorchEngine.prefill_tokens
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _count_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise TrtbuildError(f"{name}={raw[:40]!r} is not a thread count; set it to a whole number >= 1 or unset it")
    return int(raw)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchModel:
    """Mistral forward over a slot-indexed KV cache (the modules of trtbuild.runtime.mistral)."""

    def __init__(self, model_dir: Path, device: str, runner: SplitRunner | None = None):
        self.device = device
        self.net, self.kv_scales, self.weight_dtype, self.dtype, self.num_fp8_linears = load_checkpoint(model_dir, device)
        self.config = self.net.config
        if self.kv_scales is not None:
            self.kv_scales = self.kv_scales.to(device)
        self.lm_head = LMHead(self.net.lm_head, runner)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        cfg = self.config
        return KVCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim, self.dtype,
                       self.device, self.kv_scales)

    def forward(self, tokens: torch.Tensor, cache: KVCache, slots: torch.Tensor, starts: torch.Tensor,
                last: torch.Tensor | None = None, run: slice | None = None, fresh: bool = False) -> torch.Tensor:
        """float32 logits of hidden(...) [..., V]."""
        return self.lm_head(self.hidden(tokens, cache, slots, starts, last, run, fresh)).float()

    def hidden(self, tokens: torch.Tensor, cache: KVCache, slots: torch.Tensor, starts: torch.Tensor,
               last: torch.Tensor | None = None, run: slice | None = None, fresh: bool = False) -> torch.Tensor:
        """tokens [B, n] at positions starts[b] + (0..n-1) of cache slots[b] -> the final norm's output (the
        LM head's input) at the positions `last` selects in each row: last [B] -> [B, H]; last [B, k] ->
        [B, k, H]; None -> [B, n, H]. run: slice(first, first + B) when slots are exactly those (attention
        then reads a view). fresh: every start is 0 (whole prompts, right-padded): causal, no mask."""
        m = self.net.model
        batch, n = tokens.shape
        positions = starts[:, None] + torch.arange(n, device=self.device)  # [B, n]
        upto = n if fresh else int(positions.max()) + 1
        # Query j of row b sees cached positions <= its own position: causal within the new tokens, and
        # blind to another row's longer history or to padding written past its own length. From position
        # 0 that is the causal mask itself (a valid query never sees its row's padding, which comes later),
        # which attention applies without a [B, 1, n, n] mask to build and read (prefill 5-10% faster).
        mask = None
        if not fresh:
            mask = torch.arange(upto, device=self.device)[None, None, None, :] <= positions[:, None, :, None]
        x = m.embed_tokens(tokens)
        cos, sin = m.rotary_emb(x, positions)
        for i, layer in enumerate(m.layers):
            x = x + self._attention(layer.self_attn, layer.input_layernorm(x), i, cos, sin, cache, slots,
                                    positions, mask, upto, run)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if last is not None:  # the lm_head (the largest matmul of a small model) only where it is needed
            rows = torch.arange(batch, device=self.device).view(-1, *([1] * (last.dim() - 1)))
            x = x[rows, last]
        return m.norm(x)

    def _attention(self, attn, h, layer, cos, sin, cache, slots, positions, mask, upto, run):
        q, k, v = attn.qkv(h, cos, sin)
        keys, values = cache.update(layer, slots, positions, k, v, upto, run)
        return attn.output(attend(q, keys, values, mask))


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of q [B, heads, n, d] over keys and values [B, kv_heads, L, d] where the boolean mask [B, 1,
    n, L] allows (None: causal), query head h reading KV head h // (heads / kv_heads), as enable_gqa does."""
    batch, heads, n, dim = q.shape
    if n == 1 and mask is not None:
        # A decode step: the query heads that share a KV head become rows of one attention over it, which
        # torch's CPU kernel runs ~2x faster than enable_gqa at 8-32 rows (the same math; rounding aside).
        groups = keys.shape[1]
        return F.scaled_dot_product_attention(q.reshape(batch, groups, heads // groups, dim), keys, values,
                                              attn_mask=mask).view(batch, heads, 1, dim)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None, enable_gqa=True)


@dataclass
class _Request:
    stream: RequestStream
    sampler: SamplerState | None = None  # set when admitted
    slot: int = -1
    length: int = 0  # tokens in the KV cache
    next_token: int = -1  # sampled, not yet in the cache

    @property
    def prompt(self) -> list[int]:
        return self.stream.prompt_token_ids


class TorchEngine(Engine):
    def __init__(self, engine_dir: str | Path, device: str | None = None, manifest: Manifest | None = None,
                 threads: int | None = None, step_threads: int | None = None):
        self.engine_dir = Path(engine_dir)
        # Intra-op threads of the engine thread (thread-local in torch). One by default: a small model's
        # decode matmuls are too small to split, and on shared cores OpenMP barriers stall (measured on a
        # busy 2-core box, tiny model, one decode step at batch 1 / 8: 174 / 708 ms with 2 threads,
        # 19 / 27 ms with 1). TRTBUILD_TORCH_THREADS overrides it, e.g. for a larger model on many cores.
        self.threads = threads or _count_from_env("TRTBUILD_TORCH_THREADS", 1)
        # The LM head's vocabulary blocks (trtbuild.runtime.lm_head), and a plain-sampled step's draw inside
        # them, run on this many threads, the engine's own included: by default on a second CPU where the
        # process may use one (not under `taskset -c 0`) and torch runs one intra-op thread.
        # TRTBUILD_STEP_THREADS overrides it (1: the engine thread alone). Other sampling stays on the engine
        # thread: split by rows it was slower (docs/benchmarks.md, sixth pass).
        default = min(2, len(os.sched_getaffinity(0))) if self.threads == 1 else 1
        self.step_threads = step_threads or _count_from_env("TRTBUILD_STEP_THREADS", default)
        manifest = manifest or verify_engine(self.engine_dir)
        if manifest.backend != "torch":
            raise TrtbuildError(f"{self.engine_dir.name} is a {manifest.backend} engine, not a torch one")
        self.device = device or default_device()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise TrtbuildError(f"device {self.device} was asked for but torch sees no CUDA GPU; use --device cpu")
        model_dir = self.engine_dir / "model"
        cpu = self.device == "cpu"
        self._runner = SplitRunner(self.step_threads - 1, "torch-step") if cpu and self.step_threads > 1 else None
        self.model = TorchModel(model_dir, self.device, self._runner)
        self.tokenizer = Tokenizer.from_model_dir(model_dir)
        self.tokenizer.piece_texts  # built now (0.1 s), not inside the first request's first token
        build = manifest.build
        self.max_batch_size = int(build["max_batch_size"])
        self.max_num_tokens = int(build.get("max_num_tokens") or 0) or None
        # Prompts are prefilled in groups of at most this many (padded) tokens, and each group's first
        # tokens go out as soon as it is done: on the CPU a 1024-token forward is no cheaper per token than
        # two of 512, so a burst of new requests gets its first tokens in turn instead of all at the end.
        # Measured (tiny model, 64-token prompts arriving together, busy 2-core box): TTFT p50 140 -> 104 ms
        # for 16 requests, 295 -> 170 ms for 32, the burst's last token no later; groups of 256 or 128
        # tokens pay the LM head and per-forward overhead once more per group and lose again.
        budget = PREFILL_GROUP_TOKENS_CPU if self.device == "cpu" else None
        self.prefill_tokens = min(filter(None, (budget, self.max_num_tokens)), default=None)
        max_seq_len = int(build["max_seq_len"])
        precision = dict(manifest.precision, compute_dtype=DTYPE_NAMES[self.model.dtype], device=self.device)
        self.info = EngineInfo(
            name=self.engine_dir.name, variant=manifest.variant, backend="torch",
            model_id=str(manifest.source.get("model_id", "")), max_seq_len=max_seq_len,
            max_batch_size=self.max_batch_size, max_input_len=int(build["max_input_len"]),
            vocab_size=self.model.config.vocab_size, eos_id=self.tokenizer.eos_id, precision=precision,
            engine_dir=str(self.engine_dir), can_score=True)
        self._check_precision(manifest)
        self._cache = self.model.new_cache(self.max_batch_size, max_seq_len)
        self._free_slots = list(range(self.max_batch_size - 1, -1, -1))
        self._sampler = Sampler(self.model.config.vocab_size, self.tokenizer.eos_id, self.max_batch_size)
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._cv = threading.Condition()
        self._closing = False
        self._dead: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"torch-engine-{self.engine_dir.name}", daemon=True)
        self._thread.start()

    def _check_precision(self, manifest: Manifest) -> None:
        """The manifest and the checkpoint must agree on what is FP8: never run other numerics silently."""
        def is_fp8(name):
            return any(tag in str(manifest.precision.get(name, "")).lower() for tag in ("fp8", "float8"))
        wants_fp8, wants_kv8 = is_fp8("weights"), is_fp8("kv_cache")
        has_fp8, has_kv8 = self.model.num_fp8_linears > 0, self.model.kv_scales is not None
        if (wants_fp8, wants_kv8) != (has_fp8, has_kv8):
            raise TrtbuildError(f"engine {self.engine_dir.name}: manifest precision {manifest.precision} does not "
                                f"match its checkpoint (fp8 linears: {has_fp8}, fp8 kv cache: {has_kv8}); "
                                "rebuild it with `trtbuild compile --force`")

    # --- the interface --------------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
               request_id: str | None = None) -> RequestStream:
        self._check_alive()
        stream = self.new_stream(prompt_ids, params, request_id, on_cancel=self._wake)
        with self._cv:
            self._check_alive()
            self._waiting.append(_Request(stream))
            self._cv.notify()
        return stream

    def score(self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]):
        ids = [*prompt_ids, *continuation_ids]
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(ids) > self.info.max_seq_len:
            raise ContextLengthExceeded(len(prompt_ids), len(continuation_ids), self.info.max_seq_len,
                                        self.info.max_input_len)
        cache = self.model.new_cache(1, len(ids))  # a private cache: scoring never touches running requests
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        predicting = torch.arange(len(prompt_ids) - 1, len(ids) - 1, device=self.device)[None]
        with torch.inference_mode():
            logits = self.model.forward(torch.tensor([ids], device=self.device), cache, zero, zero, last=predicting,
                                        fresh=True)
        return torch.log_softmax(logits[0], dim=-1).cpu().numpy()

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)
        if self._runner and not self._thread.is_alive():
            self._runner.close()

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineError(f"engine {self.info.name} failed and stopped: {self._dead}")
        if self._closing:
            raise EngineError(f"engine {self.info.name} is closed")

    def _wake(self, _stream=None) -> None:
        with self._cv:
            self._cv.notify()

    # --- the loop (engine thread only) ----------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                while self._step():
                    pass
        except Exception as exc:  # the model itself failed: every request in flight fails with it
            self._dead = f"{type(exc).__name__}: {exc}"
        self._end_all("error" if self._dead else "abort", self._dead)

    def _step(self) -> bool:
        with self._cv:
            while not (self._closing or self._waiting or self._running):
                self._cv.wait()
            if self._closing:
                return False
            admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        self._retire()
        if self._running:
            self._decode(self._running)
        self._retire()
        return True

    def _admit(self) -> list[_Request]:
        admitted = []
        while self._waiting and self._free_slots:
            req = self._waiting.popleft()
            if req.stream.finished:  # cancelled while it waited
                continue
            self._start(req)
            admitted.append(req)
        if admitted:
            self._running = sorted(self._running + admitted, key=lambda r: r.slot)  # slot order: see KVCache
        return admitted

    def _start(self, req: _Request) -> None:
        req.slot = self._free_slots.pop()
        req.sampler = self._sampler.start(req.stream.params, req.prompt, row=req.slot)
        req.sampler.processors += grammar_processors(req.stream.params, self.tokenizer)  # structured output
        req.stream.mark_scheduled()

    def _prefill(self, requests: list[_Request]) -> None:
        """Right-padded batches of whole prompts, shortest first, each at most prefill_tokens padded tokens."""
        group: list[_Request] = []
        for req in sorted(requests, key=lambda r: len(r.prompt)):  # ascending: req is the longest so far
            if group and self.prefill_tokens and len(req.prompt) * (len(group) + 1) > self.prefill_tokens:
                self._prefill_group(group)
                group = []
            group.append(req)
        self._prefill_group(group)

    def _prefill_group(self, group: list[_Request]) -> None:
        longest = max(len(r.prompt) for r in group)
        tokens = torch.zeros(len(group), longest, dtype=torch.long)
        for row, req in enumerate(group):
            tokens[row, :len(req.prompt)] = torch.tensor(req.prompt)
            req.length = len(req.prompt)
        hidden = self.model.hidden(tokens.to(self.device), self._cache, self._slots(group),
                                   torch.zeros(len(group), dtype=torch.long, device=self.device),
                                   last=self._tensor([r.length - 1 for r in group]), fresh=True)
        self._sample(group, hidden)

    def _decode(self, requests: list[_Request]) -> None:
        tokens = self._tensor([[r.next_token] for r in requests])
        starts = self._tensor([r.length for r in requests])
        first, count = requests[0].slot, len(requests)
        consecutive = requests[-1].slot - first == count - 1  # _running is in slot order
        hidden = self.model.hidden(tokens, self._cache, self._slots(requests), starts,
                                   last=torch.zeros(count, dtype=torch.long, device=self.device),
                                   run=slice(first, first + count) if consecutive else None)
        for req in requests:
            req.length += 1
        self._sample(requests, hidden)

    def _sample(self, requests: list[_Request], hidden: torch.Tensor) -> None:
        """The LM head and the next tokens. A step whose rows are all plain-sampled draws inside the LM
        head's blocks (Sampler.plain_draw): the same tokens, without passes over the whole logits after."""
        states, head = [r.sampler for r in requests], self.model.lm_head
        draw = self._sampler.plain_draw(states) if head.blocked else None
        if draw is not None:
            sampled = self._sampler.sample_blocks(draw, head.blocks(hidden, draw.block), states)
        else:  # on the CPU: the tokens are needed there anyway, and the sampler's state lives there
            sampled = self._sampler.sample(head(hidden).float().cpu(), states)
        with batched_wakeups():  # one wake-up per consumer loop per step, not one per token
            for req, out in zip(requests, sampled):
                if isinstance(out, Exception):  # that request's logits processor failed: it fails alone
                    req.stream.finish("error", error=f"sampling failed: {type(out).__name__}: {out}")
                    continue
                token, logprob, top = out
                req.next_token = token
                req.stream.emit_token(token, logprob, top)

    def _retire(self) -> None:
        """Free the slots of finished requests (done, stopped or cancelled)."""
        keep, done = [], []
        for req in self._running:
            (done if req.stream.finished else keep).append(req)
        if done:
            with self._cv:
                self._running = keep
                # lowest slots first (pop() takes the last): running requests stay packed at the bottom
                self._free_slots = sorted([*self._free_slots, *(r.slot for r in done)], reverse=True)

    def _end_all(self, reason: str, error: str | None) -> None:
        with self._cv:
            left, self._running, self._waiting = [*self._running, *self._waiting], [], deque()
        for req in left:
            req.stream.finish(reason, error=error)

    def _slots(self, requests: list[_Request]) -> torch.Tensor:
        return self._tensor([r.slot for r in requests])

    def _tensor(self, data) -> torch.Tensor:
        return torch.tensor(data, dtype=torch.long, device=self.device)
