"""Logits -> next tokens for the torch backends, for the whole batch at once (TensorRT-LLM samples inside
its own runtime).

    sampler = Sampler(vocab_size, eos_id, capacity=max_batch_size)
    state = sampler.start(params, prompt_ids, row=slot)     # when a request is admitted
    picks = sampler.sample(logits, [state, ...])             # each step: [B, V] -> B (token, logprob, top)

One step is a fixed handful of batched tensor ops whatever the mix of requests in the batch:
1. logprobs of the model's raw distribution, for the rows that asked (as OpenAI and vLLM report them);
2. edits, only on the rows that need them: logit_bias, repetition / frequency / presence penalties
   (token counts live in [capacity, V] tensors indexed by the request's row, updated with one scatter per
   step), min_tokens (EOS and stop ids banned), and per-request logits processors (the hook for
   structured output: `SamplingParams.logits_processors`, each `f(output_ids, logits_row) -> logits_row`);
3. greedy rows: argmax (blocked, argmax_rows). Sampled rows without top-k/top-p: exp((logits - max) / T)
   and an inverse-CDF draw in two levels, per block of vocabulary columns (trtbuild.runtime.draw): no
   sort. When every row of a step is such a row, the engine runs those blocks inside its LM head instead
   (plain_draw, sample_blocks): the same numbers, while each block is still in the cache.
   Rows with top-k and/or top-p: the top candidates (top_k of them, or TOP_P_CANDIDATES for top-p alone),
   the nucleus among them, the same inverse-CDF draw; a top-p row whose nucleus does not fit the
   candidates is sorted in full (exact).

Randomness is counter-based: the uniform a request uses for its n-th token is splitmix64(seed, n), one
number per row and step. A request's tokens therefore depend only on its own logits, seed and position,
never on what else is in the batch, the batch's order or size (tests/test_sampling.py checks it), and
sampling costs one pass over the logits instead of torch.multinomial's V exponentials per row.
Unseeded requests get a random seed at start.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from trtbuild.runtime.draw import PlainDraw
from trtbuild.runtime.interface import SamplingParams

TOP_P_CANDIDATES = 256  # a top-p-only row looks for its nucleus among its best 256 tokens, else sorts all
BLOCK = 256  # argmax_rows: the maxima of blocks of 256 tokens, then inside the best block
MASK64 = (1 << 64) - 1


def uniform(seed: int, position: int) -> float:
    """A uniform in [0, 1) from (seed, position): splitmix64 of a counter (Steele et al., 2014)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (position + 1) * 0xD1B54A32D192ED03) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return ((z ^ (z >> 31)) >> 11) * 2.0 ** -53


def rows_of(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """x[idx]: x itself when idx is every row in order, else index_select (a list index is several times
    slower on wide rows)."""
    if len(idx) == len(x) and idx == list(range(len(x))):
        return x
    return torch.index_select(x, 0, torch.tensor(idx))


def argmax_rows(x: torch.Tensor, width: int = BLOCK) -> torch.Tensor:
    """x.argmax(-1) of [B, V] rows, ties and NaN alike (the first maximum; NaN counts as the largest),
    4-7x faster on wide rows at batch 8-32: torch's argmax walks a row one element at a time, its amax is
    vectorized. So: the first block (of `width` tokens) holding the row's maximum, then argmax inside it."""
    rows, vocab = x.shape
    if vocab % width or vocab < 4 * width:
        return x.argmax(-1)
    blocks = x.view(rows, vocab // width, width)
    best = blocks.amax(-1).argmax(-1)
    return best * width + blocks[torch.arange(rows), best].argmax(-1)


def top_candidates(x: torch.Tensor, k: int, width: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(x, k) of each row, sorted, about twice as fast on wide rows: the k best tokens lie in the
    k blocks (of `width` tokens) with the highest maxima, so only those blocks are searched."""
    rows, vocab = x.shape
    if vocab % width or k * width * 4 > vocab:
        return torch.topk(x, k, dim=-1)
    blocks = torch.topk(x.view(rows, vocab // width, width).amax(-1), k, dim=-1).indices
    cols = (blocks[:, :, None] * width + torch.arange(width)).view(rows, -1)
    vals, at = torch.topk(x.gather(1, cols), k, dim=-1)
    return vals, cols.gather(1, at)


@dataclass
class SamplerState:
    """One request's sampling state: its settings, its row in the sampler's count tensors, its position."""

    params: SamplingParams
    row: int
    eos_id: int
    seed: int = 0
    generated: int = 0
    output_ids: list[int] = field(default_factory=list)
    banned: list[int] = field(default_factory=list)  # banned while generated < min_tokens
    counts: bool = False  # keeps token counts (repetition, frequency or presence penalty)
    bias: tuple[list[int], list[float]] | None = None
    processors: list = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.params.greedy

    @property
    def truncated(self) -> bool:
        return self.params.top_k > 0 or self.params.top_p < 1

    @property
    def bans(self) -> list[int]:
        """The ids banned at this step: EOS and the stop ids until min_tokens are out."""
        return self.banned if self.generated < self.params.min_tokens else []


class Sampler:
    def __init__(self, vocab_size: int, eos_id: int, capacity: int, device: str = "cpu"):
        self.vocab_size, self.eos_id, self.capacity, self.device = vocab_size, eos_id, capacity, device
        self._counts: torch.Tensor | None = None  # [capacity, V] generated-token counts (penalties only)
        self._seen: torch.Tensor | None = None
        self._in_prompt: torch.Tensor | None = None  # [capacity, V] prompt tokens (repetition penalty only)
        self._plain: tuple[tuple, PlainDraw] | None = None  # the last draw, by what defines it (_draw)

    def start(self, params: SamplingParams, prompt_ids, row: int) -> SamplerState:
        """A request takes `row` (an engine slot, < capacity) until its next start()."""
        if not 0 <= row < self.capacity:
            raise ValueError(f"sampler row {row} outside [0, {self.capacity})")
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
        p = params
        state = SamplerState(p, row, self.eos_id, seed=int(seed) & MASK64,
                             banned=[self.eos_id, *p.stop_token_ids] if p.min_tokens else [],
                             counts=p.repetition_penalty != 1 or p.frequency_penalty != 0 or p.presence_penalty != 0,
                             processors=list(getattr(p, "logits_processors", None) or []))
        bias = getattr(p, "logit_bias", None)
        if bias:
            ids = [int(t) for t in bias]
            if any(not 0 <= t < self.vocab_size for t in ids):
                raise ValueError(f"logit_bias token ids must be in [0, {self.vocab_size})")
            state.bias = (ids, [float(v) for v in bias.values()])
        if state.counts:
            if self._counts is None:
                self._counts = torch.zeros(self.capacity, self.vocab_size, device=self.device)
                self._seen = torch.zeros(self.capacity, self.vocab_size, device=self.device)  # counts > 0, as 0/1
                self._in_prompt = torch.zeros(self.capacity, self.vocab_size, dtype=torch.bool, device=self.device)
            self._counts[row].zero_()
            self._seen[row].zero_()
            self._in_prompt[row].zero_()
            if p.repetition_penalty != 1 and len(prompt_ids):
                self._in_prompt[row, torch.tensor(list(prompt_ids), dtype=torch.long, device=self.device)] = True
        return state

    # --- one step --------------------------------------------------------------------------------------
    def sample(self, logits: torch.Tensor, states: list[SamplerState]) -> list[tuple[int, float | None, list | None]
                                                                              | Exception]:
        """logits [B, V] (row i belongs to states[i]; edited in place) -> per row (token, its logprob or
        None, top alternatives or None), or the exception a row's logits processor raised (that request
        failed; the others go on); advances every state by one token."""
        logits = logits.float()
        batch = len(states)
        want_lp = {i: j for j, i in enumerate(i for i, s in enumerate(states) if s.params.logprobs or s.params.top_logprobs)}
        logprobs = torch.log_softmax(rows_of(logits, list(want_lp)), dim=-1) if want_lp else None
        failed = self._edit(logits, states)
        tokens = torch.empty(batch, dtype=torch.long)
        greedy = [i for i, s in enumerate(states) if s.greedy]
        if len(greedy) == batch:
            tokens = argmax_rows(logits)
        else:
            if greedy:
                tokens[greedy] = argmax_rows(rows_of(logits, greedy))
            plain = [i for i, s in enumerate(states) if not s.greedy and not s.truncated]
            if plain:
                tokens[plain] = self._draw_plain(logits, plain, states)
            cut = [i for i, s in enumerate(states) if not s.greedy and s.truncated]
            if cut:
                tokens[cut] = self._draw_truncated(logits, cut, states)
        token_list = tokens.tolist()
        self._record(states, token_list)
        out = []
        for i, state in enumerate(states):
            if i in failed:
                out.append(failed[i])
                continue
            lp = top = None
            if i in want_lp:
                row = logprobs[want_lp[i]]
                lp = float(row[token_list[i]])
                if state.params.top_logprobs:
                    vals, ids = torch.topk(row, state.params.top_logprobs)
                    top = list(zip(ids.tolist(), vals.tolist()))
            out.append((token_list[i], lp, top))
        return out

    def plain_draw(self, states: list[SamplerState]) -> PlainDraw | None:
        """The step's draw when every row is plain-sampled with no edit but min_tokens bans (no logprobs,
        penalties, logit_bias or processors): the engine then runs draw.block on each block of its LM head
        as the block is computed, and hands the results to sample_blocks. None: sample() whole logits."""
        if any(s.greedy or s.truncated or s.counts or s.bias or s.processors or s.params.logprobs
               or s.params.top_logprobs for s in states):
            return None
        return self._draw([s.params.temperature for s in states], [s.bans for s in states])

    def _draw(self, temperatures: list[float], bans: list[list[int]]) -> PlainDraw:
        """The PlainDraw for these rows. A draw is defined by its rows' temperatures and bans, which stay
        the same from step to step of one batch: it is built again only when they change (its small arrays
        and tensors cost up to ~0.2 ms a step on the cold caches the layers leave)."""
        key = tuple((t, *b) for t, b in zip(temperatures, bans))
        if self._plain is None or self._plain[0] != key:
            self._plain = key, PlainDraw(temperatures, bans)
        return self._plain[1]

    def sample_blocks(self, draw: PlainDraw, parts: list, states: list[SamplerState]) -> list[tuple[int, None, None]]:
        """sample() for a plain_draw step, from its blocks' results in column order: the same tokens."""
        tokens = draw.tokens(draw.join(parts), self._uniforms(states))[0].tolist()
        self._record(states, tokens)
        return [(token, None, None) for token in tokens]

    def _edit(self, logits: torch.Tensor, states: list[SamplerState]) -> dict[int, Exception]:
        """logit_bias, penalties, min_tokens bans and logits processors, batched where they apply; returns
        the rows whose processor failed."""
        bias_rows, bias_ids, bias_vals, ban_rows, ban_ids = [], [], [], [], []
        for i, s in enumerate(states):
            if s.bias is not None:
                bias_rows += [i] * len(s.bias[0])
                bias_ids += s.bias[0]
                bias_vals += s.bias[1]
            if bans := s.bans:
                ban_rows += [i] * len(bans)
                ban_ids += bans
        if bias_rows:
            logits.index_put_((torch.tensor(bias_rows), torch.tensor(bias_ids)), torch.tensor(bias_vals),
                              accumulate=True)
        penalized = [i for i, s in enumerate(states) if s.counts]
        if penalized:
            self._penalize(logits, penalized, states)
        if ban_rows:
            logits[torch.tensor(ban_rows), torch.tensor(ban_ids)] = float("-inf")
        failed = {}
        for i, s in enumerate(states):
            for processor in s.processors:
                try:
                    logits[i] = processor(list(s.output_ids), logits[i])
                except Exception as exc:  # noqa: BLE001 - that request fails, the batch goes on
                    failed[i] = exc
                    logits[i] = 0.0
                    break
        return failed

    def _penalize(self, logits: torch.Tensor, idx: list[int], states: list[SamplerState]) -> None:
        """In place on the rows' logits, reading the rows' counts as a view when they are consecutive."""
        rows = [states[i].row for i in idx]
        params = [states[i].params for i in idx]
        every = len(idx) == len(states)
        sub = rows_of(logits, idx)
        if rows == list(range(rows[0], rows[0] + len(rows))):
            counts, seen = self._counts[rows[0]:rows[0] + len(rows)], self._seen[rows[0]:rows[0] + len(rows)]
        else:
            counts, seen = self._counts[rows], self._seen[rows]
        rep = [p.repetition_penalty for p in params]
        if any(r != 1 for r in rep):  # HF/vLLM rule, over prompt and output tokens
            factor = torch.tensor(rep)[:, None]
            hit = (seen > 0) | self._in_prompt[rows]
            sub = torch.where(hit, torch.where(sub > 0, sub / factor, sub * factor), sub)
        freq, presence = [p.frequency_penalty for p in params], [p.presence_penalty for p in params]
        if any(freq):  # OpenAI rule, output tokens only
            sub.addcmul_(counts, torch.tensor(freq)[:, None], value=-1)
        if any(presence):
            sub.addcmul_(seen, torch.tensor(presence)[:, None], value=-1)
        if not every or any(r != 1 for r in rep):
            logits.index_copy_(0, torch.tensor(idx), sub)

    def _draw_plain(self, logits: torch.Tensor, idx: list[int], states: list[SamplerState]) -> torch.Tensor:
        """softmax(logits / T) over the whole vocabulary, one inverse-CDF draw per row, in the blocks of
        trtbuild.runtime.draw (the engine's LM head runs the same blocks when the whole step is plain)."""
        x = rows_of(logits, idx)  # the step's own logits: edited in place
        draw = self._draw([states[i].params.temperature for i in idx], [[] for _ in idx])  # _edit banned
        tokens, _ = draw.tokens(draw.whole(x), self._uniforms([states[i] for i in idx]))
        return torch.from_numpy(tokens)

    @staticmethod
    def _uniforms(states: list[SamplerState]) -> np.ndarray:
        return np.array([uniform(s.seed, s.generated) for s in states])

    def _draw_truncated(self, logits: torch.Tensor, idx: list[int], states: list[SamplerState]) -> torch.Tensor:
        """top-k and/or top-p rows: the nucleus among each row's best candidates, then the same draw."""
        params = [states[i].params for i in idx]
        want = [p.top_k if p.top_k > 0 else TOP_P_CANDIDATES for p in params]
        k = min(max(want), self.vocab_size)
        x = rows_of(logits, idx)
        temps = torch.tensor([p.temperature for p in params])[:, None]
        vals, ids = top_candidates(x, k)  # sorted, best first; temperature keeps the order
        vals = vals.double() / temps
        limit = torch.tensor([min(w, k) for w in want])[:, None]
        in_k = torch.arange(k)[None, :] < limit
        # Each row's normaliser: its own top-k set, or (top-p alone) its whole vocabulary.
        top_only = torch.tensor([p.top_k > 0 for p in params])
        lse = torch.logsumexp(vals.masked_fill(~in_k, float("-inf")), dim=-1)
        whole = [j for j, p in enumerate(params) if p.top_k == 0]
        if whole:
            lse[whole] = torch.logsumexp(x[whole].double() / temps[whole], dim=-1)
        probs = torch.exp(vals - lse[:, None]) * in_k
        top_p = torch.tensor([p.top_p for p in params], dtype=torch.float64)[:, None]
        before = probs.cumsum(-1) - probs
        keep = in_k & ((before <= top_p) | (top_p >= 1))  # the smallest nucleus whose mass reaches top_p
        kept = probs * keep
        u = torch.from_numpy(self._uniforms([states[i] for i in idx]))
        cum = kept.cumsum(-1)
        rest = torch.minimum(u * cum[:, -1], torch.nextafter(cum[:, -1], torch.zeros_like(cum[:, -1])))
        pos = torch.searchsorted(cum, rest[:, None], right=True).clamp_(max=k - 1)[:, 0]
        tokens = ids.gather(1, pos[:, None])[:, 0]
        # A top-p-only row that kept every candidate may need more: sort the whole row (rare, exact).
        overflow = (~top_only) & keep[:, -1] & (k < self.vocab_size)
        bad = ~(torch.isfinite(cum[:, -1]) & (cum[:, -1] > 0))
        for j in (overflow | bad).nonzero()[:, 0].tolist():
            tokens[j] = self._draw_sorted(x[j], states[idx[j]]) if not bad[j] else int(torch.nan_to_num(x[j]).argmax())
        return tokens

    def _draw_sorted(self, row: torch.Tensor, state: SamplerState) -> int:
        p = state.params
        vals, ids = torch.sort(row.double() / p.temperature, descending=True)
        probs = torch.softmax(vals, dim=-1)
        keep = probs.cumsum(-1) - probs <= p.top_p
        cum = (probs * keep).cumsum(-1)
        target = min(uniform(state.seed, state.generated) * float(cum[-1]), float(torch.nextafter(cum[-1], cum[-1] * 0)))
        return int(ids[int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64), right=True)[0])])

    def _record(self, states: list[SamplerState], tokens: list[int]) -> None:
        rows, toks = [], []
        for state, token in zip(states, tokens):
            state.generated += 1
            state.output_ids.append(token)
            if state.counts:
                rows.append(state.row)
                toks.append(token)
        if rows:
            at = (torch.tensor(rows), torch.tensor(toks))
            self._counts.index_put_(at, torch.ones(len(rows)), accumulate=True)
            self._seen.index_put_(at, torch.ones(len(rows)))
