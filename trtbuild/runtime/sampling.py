"""Logits -> next tokens for the torch backends (TensorRT-LLM samples inside its own runtime).

Each request owns a torch.Generator seeded from its `seed`, so a seeded request draws the same tokens
whatever else shares its batch. Greedy rows without penalties take one batched argmax: the common case
in validation and benchmarks stays off the per-row path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from trtbuild.runtime.interface import SamplingParams


@dataclass
class SamplerState:
    """Per-request sampling state: its generator and the token counts penalties need."""

    params: SamplingParams
    prompt_ids: list[int]
    eos_id: int
    generator: torch.Generator = field(init=False)
    counts: dict[int, int] = field(default_factory=dict)  # generated token -> times seen
    generated: int = 0
    # logit bias and grammar (trtbuild.runtime.guided.LogitsMask): apply(row) before sampling, advance(token)
    mask: object | None = None

    def __post_init__(self):
        self.generator = torch.Generator()
        seed = self.params.seed if self.params.seed is not None else random.SystemRandom().getrandbits(63)
        self.generator.manual_seed(int(seed))

    @property
    def needs_row_path(self) -> bool:
        p = self.params
        return (self.mask is not None or not p.greedy or p.frequency_penalty != 0 or p.presence_penalty != 0
                or p.repetition_penalty != 1 or self.generated < p.min_tokens)

    def record(self, token_id: int) -> None:
        self.counts[token_id] = self.counts.get(token_id, 0) + 1
        self.generated += 1
        if self.mask is not None:
            self.mask.advance(token_id)


def apply_penalties(row: torch.Tensor, state: SamplerState) -> torch.Tensor:
    p = state.params
    if p.repetition_penalty != 1:  # HF/vLLM rule, over prompt and output tokens
        seen = torch.tensor(sorted(set(state.prompt_ids) | set(state.counts)), dtype=torch.long)
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if state.counts and (p.frequency_penalty or p.presence_penalty):  # OpenAI rule, output tokens only
        ids = torch.tensor(list(state.counts), dtype=torch.long)
        counts = torch.tensor(list(state.counts.values()), dtype=row.dtype)
        row[ids] -= counts * p.frequency_penalty + p.presence_penalty
    if state.generated < p.min_tokens:
        row[[state.eos_id, *p.stop_token_ids]] = float("-inf")
    return row


def sample_row(row: torch.Tensor, state: SamplerState) -> int:
    p = state.params
    penalized = apply_penalties(row.clone(), state)
    if state.mask is not None:  # logit bias and the grammar: the one hook on a request's logits row
        state.mask.apply(penalized)
    if p.greedy:
        return int(torch.argmax(penalized))
    row = penalized / p.temperature
    if p.top_k > 0:
        kth = torch.topk(row, min(p.top_k, row.numel())).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if not torch.isfinite(probs).all():  # a tiny temperature or extreme penalty overflowed: take the best token
        return int(torch.argmax(torch.nan_to_num(penalized)))
    if p.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = torch.cumsum(sorted_probs, 0) - sorted_probs > p.top_p  # keep the smallest nucleus >= top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=state.generator))


def sample_batch(logits: torch.Tensor, states: list[SamplerState]) -> list[tuple[int, float | None, list | None]]:
    """logits [B, V] (any float dtype) -> per row (token, its logprob, top alternatives) and update states.

    Logprobs are those of the model's raw distribution (before penalties and temperature), as vLLM and
    OpenAI report them.
    """
    logits = logits.float()
    tokens = torch.argmax(logits, dim=-1).tolist()
    for i, state in enumerate(states):
        if state.needs_row_path:
            tokens[i] = sample_row(logits[i], state)
    want_lp = [i for i, s in enumerate(states) if s.params.logprobs or s.params.top_logprobs]
    logprobs: dict[int, torch.Tensor] = {}
    if want_lp:
        rows = torch.log_softmax(logits[want_lp], dim=-1)
        logprobs = dict(zip(want_lp, rows))
    out = []
    for i, state in enumerate(states):
        token, lp, top = tokens[i], None, None
        if i in logprobs:
            lp = float(logprobs[i][token])
            k = state.params.top_logprobs
            if k:
                vals, ids = torch.topk(logprobs[i], k)
                top = list(zip(ids.tolist(), vals.tolist()))
        state.record(token)
        out.append((token, lp, top))
    return out
