"""Sampling (trtbuild.runtime.sampling) on synthetic logits: seeds, batch independence, the knobs."""

from __future__ import annotations

import math

import torch

from trtbuild.runtime.interface import SamplingParams
from trtbuild.runtime.sampling import SamplerState, sample_batch

EOS = 2
VOCAB = 50


def state(prompt=(5, 6), **params) -> SamplerState:
    return SamplerState(SamplingParams(max_tokens=100, **params), list(prompt), EOS)


def logits_from_probs(probs) -> torch.Tensor:
    probs = torch.tensor(probs, dtype=torch.float32)
    return torch.log(probs / probs.sum())


def run(states, steps: int, logits: torch.Tensor) -> list[list[int]]:
    """Sample `steps` tokens for each state from the same [V] logits (batched) -> tokens per state."""
    out = [[] for _ in states]
    for _ in range(steps):
        for seq, (token, _, _) in zip(out, sample_batch(logits.expand(len(states), -1).clone(), states)):
            seq.append(token)
    return out


FLAT = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0))


def test_same_seed_same_tokens_across_runs():
    first = run([state(temperature=1.0, seed=42)], 30, FLAT)[0]
    second = run([state(temperature=1.0, seed=42)], 30, FLAT)[0]
    other = run([state(temperature=1.0, seed=43)], 30, FLAT)[0]
    assert first == second
    assert first != other
    assert len(set(first)) > 5  # really sampling, not greedy


def test_a_seeded_row_ignores_its_batch():
    alone = run([state(temperature=0.9, top_p=0.9, seed=7)], 25, FLAT)[0]
    batch = [state(temperature=1.3, seed=1), state(temperature=0), state(temperature=0.9, top_p=0.9, seed=7),
             state(temperature=0.7, top_k=5, seed=99, frequency_penalty=1.0), state(temperature=1.0)]
    assert run(batch, 25, FLAT)[2] == alone


def test_greedy_is_argmax_and_top_k_one_is_greedy():
    logits = torch.stack([FLAT, FLAT.flip(0)])
    tokens = [t for t, _, _ in sample_batch(logits, [state(temperature=0), state(temperature=1.0, top_k=1, seed=3)])]
    assert tokens == [int(FLAT.argmax()), int(FLAT.flip(0).argmax())]


def test_top_k_only_draws_from_the_k_best():
    top3 = set(torch.topk(FLAT, 3).indices.tolist())
    drawn = run([state(temperature=2.0, top_k=3, seed=0)], 200, FLAT)[0]
    assert set(drawn) == top3


def test_top_p_keeps_the_smallest_nucleus():
    logits = logits_from_probs([0.5, 0.3, 0.15, 0.05])
    assert set(run([state(temperature=1.0, top_p=0.7, seed=0)], 300, logits)[0]) == {0, 1}
    assert set(run([state(temperature=1.0, top_p=0.85, seed=0)], 300, logits)[0]) == {0, 1, 2}
    assert set(run([state(temperature=1.0, top_p=1.0, seed=0)], 600, logits)[0]) == {0, 1, 2, 3}


def test_temperature_sharpens_and_flattens():
    logits = logits_from_probs([0.4, 0.3, 0.2, 0.1])
    cold = run([state(temperature=0.05, seed=0)], 300, logits)[0]
    warm = run([state(temperature=1.0, seed=0)], 3000, logits)[0]
    hot = run([state(temperature=2.0, seed=0)], 3000, logits)[0]
    assert set(cold) == {0}
    share0 = [seq.count(0) / len(seq) for seq in (warm, hot)]
    assert abs(share0[0] - 0.4) < 0.04  # temperature 1 samples the model's own distribution
    assert share0[1] < share0[0] - 0.05  # hotter: flatter


def test_frequency_and_presence_penalties_push_away_from_repeats():
    logits = logits_from_probs([0.6, 0.4])
    plain = run([state(temperature=0)], 4, logits)[0]
    presence = run([state(temperature=0, presence_penalty=1.0)], 4, logits)[0]
    frequency = run([state(temperature=0, frequency_penalty=0.3)], 6, logits)[0]
    assert plain == [0, 0, 0, 0]
    assert presence == [0, 1, 0, 0]  # once both were seen, the penalty is equal again
    # log 0.6 - log 0.4 = 0.405: after two 0s (-0.6) token 1 wins, then they alternate by counts
    assert frequency[:3] == [0, 0, 1] and frequency.count(1) >= 2


def test_repetition_penalty_covers_the_prompt():
    logits = torch.tensor([2.0, 1.9, -1.0])
    plain = run([state(prompt=[0], temperature=0)], 1, logits)[0]
    penalised = run([state(prompt=[0], temperature=0, repetition_penalty=1.2)], 1, logits)[0]
    assert (plain, penalised) == ([0], [1])  # 2.0 / 1.2 < 1.9


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.full((VOCAB,), -5.0)
    logits[EOS], logits[7], logits[9] = 5.0, 4.0, 3.0
    tokens = run([state(temperature=0, min_tokens=2, stop_token_ids=[7])], 3, logits)[0]
    assert tokens == [9, 9, EOS]


def test_logprobs_are_the_models_raw_distribution():
    logits = logits_from_probs([0.5, 0.25, 0.125, 0.125])
    (token, logprob, top), = sample_batch(logits[None].clone(), [state(temperature=0.5, seed=1, logprobs=True,
                                                                       top_logprobs=2)])
    assert math.isclose(logprob, math.log([0.5, 0.25, 0.125, 0.125][token]), rel_tol=1e-5)
    assert [t for t, _ in top] == [0, 1]
    assert math.isclose(top[0][1], math.log(0.5), rel_tol=1e-5) and top[0][1] >= top[1][1]
    (_, no_logprob, no_top), = sample_batch(logits[None].clone(), [state(temperature=0)])
    assert no_logprob is None and no_top is None
