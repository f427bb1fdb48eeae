"""Sampling (trtbuild.runtime.sampling) on synthetic logits: seeds, batch independence, distributions,
the knobs, and the logits-processor hook."""

from __future__ import annotations

import math

import numpy as np
import torch

from trtbuild.runtime.interface import SamplingParams
from trtbuild.runtime.draw import COLUMNS, PlainDraw
from trtbuild.runtime.sampling import TOP_P_CANDIDATES, Sampler, argmax_rows, top_candidates, uniform

EOS = 2
VOCAB = 50


class Batch:
    """A sampler plus its requests: each add() takes the next free row, as the engine's slots do."""

    def __init__(self, vocab: int = VOCAB, capacity: int = 64):
        self.sampler = Sampler(vocab, EOS, capacity)
        self.states = []

    def add(self, prompt=(5, 6), **params):
        self.states.append(self.sampler.start(SamplingParams(max_tokens=100, **params), list(prompt),
                                              row=len(self.states)))
        return self

    def step(self, logits: torch.Tensor) -> list:
        """One step; logits [V] (shared by every row) or [B, V]."""
        rows = logits.expand(len(self.states), -1) if logits.dim() == 1 else logits
        return self.sampler.sample(rows.clone(), self.states)

    def run(self, steps: int, logits) -> list[list[int]]:
        """`steps` tokens for every request; logits: a [V] tensor or a function step -> [B, V]."""
        out = [[] for _ in self.states]
        for n in range(steps):
            for seq, (token, _, _) in zip(out, self.step(logits(n) if callable(logits) else logits)):
                seq.append(token)
        return out


def one(steps: int, logits, prompt=(5, 6), **params) -> list[int]:
    return Batch(len(logits) if not callable(logits) else VOCAB).add(prompt, **params).run(steps, logits)[0]


def logits_from_probs(probs) -> torch.Tensor:
    probs = torch.tensor(probs, dtype=torch.float32)
    return torch.log(probs / probs.sum())


FLAT = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0))


def test_uniforms_are_a_pure_function_of_seed_and_position():
    values = [uniform(seed, pos) for seed in range(50) for pos in range(40)]
    assert all(0 <= v < 1 for v in values)
    assert len(set(values)) == len(values)
    assert abs(sum(values) / len(values) - 0.5) < 0.02  # 2000 uniforms: sd of the mean is 0.0065
    assert uniform(7, 3) == uniform(7, 3) != uniform(7, 4)


def test_same_seed_same_tokens_across_runs():
    first = one(30, FLAT, temperature=1.0, seed=42)
    assert first == one(30, FLAT, temperature=1.0, seed=42)
    assert first != one(30, FLAT, temperature=1.0, seed=43)
    assert len(set(first)) > 5  # really sampling, not greedy


SEEDED = [dict(temperature=0.9, seed=7), dict(temperature=0.9, top_p=0.9, seed=8), dict(temperature=1.2, top_k=7, seed=9),
          dict(temperature=1.0, seed=10, frequency_penalty=0.8, repetition_penalty=1.3, logit_bias={3: 2.0})]


def test_a_seeded_row_ignores_its_batch_order_and_size(kernels):
    """Each kind of seeded row gives the same tokens alone and in batches of other sizes, orders and mixes,
    while every other row sees different logits (row logits depend on the row's request, not its place)."""
    def logits_for(key: int, step: int) -> torch.Tensor:
        return torch.randn(VOCAB, generator=torch.Generator().manual_seed(1000 * key + step)) * 2

    def tokens(batch: list[tuple[int, dict]], steps: int = 25) -> dict[int, list[int]]:
        b = Batch()
        for _, params in batch:
            b.add(**params)
        out = b.run(steps, lambda n: torch.stack([logits_for(key, n) for key, _ in batch]))
        return {key: seq for (key, _), seq in zip(batch, out)}

    others = [(100, dict(temperature=1.3, seed=1)), (101, dict(temperature=0)), (102, dict(temperature=1.0)),
              (103, dict(temperature=0.7, top_k=5, seed=99, presence_penalty=1.0)),
              (104, dict(temperature=0.5, top_p=0.5, min_tokens=10, seed=3))]
    for key, params in enumerate(SEEDED):
        alone = tokens([(key, params)])[key]
        assert len(set(alone)) > 3
        assert tokens([*others, (key, params)])[key] == alone
        assert tokens([others[2], (key, params), others[0]])[key] == alone
        mixed = [(k, p) for k, p in enumerate(SEEDED)][::-1] + others[3:]
        assert tokens(mixed)[key] == alone


def test_greedy_is_argmax_and_top_k_one_is_greedy():
    b = Batch().add(temperature=0).add(temperature=1.0, top_k=1, seed=3).add(temperature=0.8, seed=5)
    tokens = [t for t, _, _ in b.step(torch.stack([FLAT, FLAT.flip(0), FLAT]))]
    assert tokens[:2] == [int(FLAT.argmax()), int(FLAT.flip(0).argmax())]


def chi_square_ok(drawn: list[int], probs: torch.Tensor) -> tuple[float, float]:
    """(statistic, bound): Pearson's chi-square of the draws against probs over its support, and the
    p = 1e-6 critical value (Wilson-Hilferty, z = 4.75): a correct sampler fails one seed set in 10^6."""
    support = (probs > 0).nonzero()[:, 0].tolist()
    n = len(drawn)
    stat = sum((drawn.count(t) - n * float(probs[t])) ** 2 / (n * float(probs[t])) for t in support)
    df = len(support) - 1
    bound = df * (1 - 2 / (9 * df) + 4.75 * math.sqrt(2 / (9 * df))) ** 3
    return stat, bound


def expected(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The textbook definition, written independently of the sampler: softmax(l / T), top-k, then the
    smallest set of most likely tokens whose mass reaches top_p, renormalised."""
    probs = torch.softmax(logits.double() / temperature, -1)
    order = torch.argsort(probs, descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for rank, t in enumerate(order.tolist()):
        if (top_k and rank >= top_k) or mass >= top_p:  # mass of the better ones already reaches top_p
            break
        keep[t] = True
        mass += float(probs[t] / probs[order[:top_k]].sum()) if top_k else float(probs[t])
    probs = probs * keep
    return probs / probs.sum()


def draws(logits: torch.Tensor, n: int, **params) -> list[int]:
    """One token from each of n requests with seeds 0..n-1, in batches of 500 (all rows at once)."""
    out = []
    for start in range(0, n, 500):
        b = Batch(len(logits), capacity=500)
        for seed in range(start, min(start + 500, n)):
            b.add(seed=seed, **params)
        out += [t for t, _, _ in b.step(logits)]
    return out


def test_sampled_tokens_follow_softmax_after_top_k_and_top_p():
    logits = torch.randn(40, generator=torch.Generator().manual_seed(5)) * 1.5
    for params in (dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.4, top_k=6),
                   dict(temperature=0.9, top_p=0.8), dict(temperature=1.1, top_k=12, top_p=0.7)):
        probs = expected(logits, **params)
        drawn = draws(logits, 4000, **params)
        assert set(drawn) <= set((probs > 0).nonzero()[:, 0].tolist()), params
        stat, bound = chi_square_ok(drawn, probs)
        assert stat < bound, (params, stat, bound)


def test_large_vocabularies_use_the_blocked_draw_and_the_full_sort(kernels):
    # 1000 tokens: 3 whole blocks of 256 and a partial one; 1024: whole blocks only (the reshaped path);
    # flat rows so every block gets draws.
    for vocab, seed in ((1000, 6), (1024, 8)):
        logits = torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 0.5
        drawn = draws(logits, 3000, temperature=1.0)
        assert set(drawn) <= set(range(vocab))
        blocks = [sum(1 for t in drawn if lo <= t < lo + 256) for lo in (0, 256, 512, 768)]
        mass = [float(torch.softmax(logits, -1)[lo:lo + 256].sum()) for lo in (0, 256, 512, 768)]
        for got, p in zip(blocks, mass):
            assert abs(got / 3000 - p) < 5 * math.sqrt(p * (1 - p) / 3000)  # 5 sd of a binomial share
    # top-p on a flat 4096-token row: the nucleus is larger than the candidates, so the row is sorted.
    flat = torch.randn(4096, generator=torch.Generator().manual_seed(7)) * 0.1
    probs = expected(flat, 1.0, top_p=0.5)
    assert int((probs > 0).sum()) > TOP_P_CANDIDATES
    drawn = draws(flat, 1000, temperature=1.0, top_p=0.5)
    assert set(drawn) <= set((probs > 0).nonzero()[:, 0].tolist())
    inside = sum(1 for t in drawn if probs[t] > 0 and t in set(torch.topk(flat, TOP_P_CANDIDATES).indices.tolist()))
    assert inside < 900  # draws reach past the first 1024 candidates (about 1024/2050 of them stay inside)


def test_the_blocked_draw_equals_a_plain_inverse_cdf(kernels):
    """PlainDraw (a max and group sums per block of columns, rescaled across blocks; then one group) picks
    the token a plain float64 inverse-CDF search of softmax(x / T) picks: whole blocks and groups, a
    partial last block and group (vocabulary 10,000 = 2 x 4,096 + 7 x 256 + 16), a block far below the
    row's max, and min_tokens bans; fixed seeds keep u off the boundaries."""
    gen = torch.Generator().manual_seed(9)
    for vocab in (1000, 8192, 10000):
        x = torch.randn(6, vocab, generator=gen) * 4
        x[1, COLUMNS:] -= 60.0  # its second block is 2^-86 of its first at T 0.5: rescaled, not lost
        temps, bans = [1.0, 0.5, 2.0, 1.0, 0.7, 1.3], [[], [3], [], [0, 1, vocab - 1], [], []]
        u = np.random.default_rng(vocab).random(6)
        draw = PlainDraw(temps, bans)
        parts = [draw.block(x.clone()[:, c:c + COLUMNS], c) for c in range(0, vocab, COLUMNS)]
        got, ok = draw.tokens(draw.join(parts), u)
        want = []
        for row, (t, banned, v) in enumerate(zip(temps, bans, u)):
            logits = x[row].double() / t
            logits[banned] = float("-inf")
            cum = torch.softmax(logits, -1).cumsum(0).numpy()
            want.append(int(np.searchsorted(cum, v * cum[-1], side="right")))
        assert ok.all() and got.tolist() == want, vocab
        probs = torch.cat([p for p, _, _ in parts], dim=1)
        assert probs[1, 3] == probs[3, 0] == probs[3, 1] == probs[3, vocab - 1] == 0  # banned: never drawn


def test_the_draw_over_whole_logits_computes_what_its_blocks_compute(kernels):
    """PlainDraw.whole (few ops over [B, V], the sampler's path) and join(block() per block) (the LM head's
    fused path) give the same maxima, group sums and probabilities bit for bit, bans included: a seeded
    request draws the same token whichever path its step took."""
    gen = torch.Generator().manual_seed(3)
    for vocab in (1000, 8192, 10000):
        x = torch.randn(5, vocab, generator=gen) * 3
        draw = PlainDraw([1.0, 0.3, 1.7, 1.0, 0.9], [[0], [], [vocab - 1, 5], [], [min(COLUMNS, vocab) - 1]])
        whole = draw.whole(x.clone())
        blocks = draw.join([draw.block(x.clone()[:, c:c + COLUMNS], c) for c in range(0, vocab, COLUMNS)])
        assert torch.equal(whole.maxima, blocks.maxima) and torch.equal(whole.sums, blocks.sums), vocab
        assert torch.equal(torch.cat(whole.probs, 1), torch.cat(blocks.probs, 1)), vocab
        u = np.random.default_rng(1).random(5)
        assert draw.tokens(whole, u)[0].tolist() == draw.tokens(blocks, u)[0].tolist()


def test_the_blocked_draw_falls_back_to_the_best_token_without_a_distribution(kernels):
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(4))
    x[0, 17] = float("nan")
    x[1] = float("-inf")  # nothing allowed
    draw = PlainDraw([1.0, 1.0, 1.0])
    got, ok = draw.tokens(draw.join([draw.block(x.clone()[:, c:c + COLUMNS], c) for c in (0, COLUMNS)]),
                          np.full(3, 0.5))
    assert ok.tolist() == [False, False, True] and all(0 <= t < 5000 for t in got.tolist())


def test_top_k_only_draws_from_the_k_best():
    top3 = set(torch.topk(FLAT, 3).indices.tolist())
    assert set(one(200, FLAT, temperature=2.0, top_k=3, seed=0)) == top3


def test_top_p_keeps_the_smallest_nucleus():
    logits = logits_from_probs([0.5, 0.3, 0.15, 0.05])
    assert set(one(300, logits, temperature=1.0, top_p=0.7, seed=0)) == {0, 1}
    assert set(one(300, logits, temperature=1.0, top_p=0.85, seed=0)) == {0, 1, 2}
    assert set(one(600, logits, temperature=1.0, top_p=1.0, seed=0)) == {0, 1, 2, 3}


def test_temperature_sharpens_and_flattens():
    logits = logits_from_probs([0.4, 0.3, 0.2, 0.1])
    assert set(one(300, logits, temperature=0.02, seed=0)) == {0}  # p(1) = 0.75^50 = 6e-7 a draw
    warm, hot = one(3000, logits, temperature=1.0, seed=0), one(3000, logits, temperature=2.0, seed=0)
    share0 = [seq.count(0) / len(seq) for seq in (warm, hot)]
    assert abs(share0[0] - 0.4) < 0.04  # 3000 draws of p = 0.4: sd 0.009, so 4 sd
    assert share0[1] < share0[0] - 0.05  # hotter: flatter (2.0 gives p(0) = 0.32)


def test_frequency_and_presence_penalties_push_away_from_repeats():
    logits = logits_from_probs([0.6, 0.4])
    assert one(4, logits, temperature=0) == [0, 0, 0, 0]
    assert one(4, logits, temperature=0, presence_penalty=1.0) == [0, 1, 0, 0]  # both seen: equal again
    frequency = one(6, logits, temperature=0, frequency_penalty=0.3)
    # log 0.6 - log 0.4 = 0.405: after two 0s (-0.6) token 1 wins, then they alternate by counts
    assert frequency[:3] == [0, 0, 1] and frequency.count(1) >= 2


def test_penalty_counts_belong_to_the_row_that_generated_them():
    logits = logits_from_probs([0.6, 0.4])
    b = Batch(2).add(temperature=0, frequency_penalty=0.3).add(temperature=0).add(temperature=0, presence_penalty=1.0)
    out = b.run(4, logits)
    assert out == [[0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    # a new request on a used row starts from zero counts
    b.states[0] = b.sampler.start(SamplingParams(max_tokens=9, temperature=0, frequency_penalty=0.3), [5], row=0)
    assert [t for t, _, _ in b.step(logits)][0] == 0


def test_repetition_penalty_covers_the_prompt():
    logits = torch.tensor([2.0, 1.9, -1.0])
    assert one(1, logits, prompt=[0], temperature=0) == [0]
    assert one(1, logits, prompt=[0], temperature=0, repetition_penalty=1.2) == [1]  # 2.0 / 1.2 < 1.9


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.full((VOCAB,), -5.0)
    logits[EOS], logits[7], logits[9] = 5.0, 4.0, 3.0
    assert one(3, logits, temperature=0, min_tokens=2, stop_token_ids=[7]) == [9, 9, EOS]
    assert set(one(2, logits, temperature=1.0, seed=1, min_tokens=2)) <= set(range(VOCAB)) - {EOS}


def test_logit_bias_adds_to_the_logits():
    assert set(one(20, FLAT, temperature=1.0, seed=2, logit_bias={11: 100.0})) == {11}
    best = int(FLAT.argmax())
    assert best not in one(50, FLAT, temperature=0.5, seed=2, logit_bias={best: -100.0})


def test_logits_processors_see_the_output_so_far_and_a_failing_one_fails_its_row_only():
    seen = []

    def only_even_after_two(output_ids, row):  # allowed-token masking, as a grammar would do it
        seen.append(list(output_ids))
        if len(output_ids) >= 2:
            row[1::2] = float("-inf")
        return row

    def broken(output_ids, row):
        raise RuntimeError("grammar exploded")

    b = Batch().add(temperature=1.0, seed=4, logits_processors=[only_even_after_two]).add(
        temperature=0, logits_processors=[broken]).add(temperature=0)
    first = b.step(FLAT)
    assert isinstance(first[1], RuntimeError) and first[2][0] == int(FLAT.argmax())
    tokens = [first[0][0]] + [b.step(FLAT)[0][0] for _ in range(5)]
    assert seen == [tokens[:n] for n in range(6)]
    assert all(t % 2 == 0 for t in tokens[2:])


def test_logprobs_are_the_models_raw_distribution():
    probs = [0.5, 0.25, 0.125, 0.125]
    (token, logprob, top), = Batch(4).add(temperature=0.5, seed=1, logprobs=True, top_logprobs=2).step(
        logits_from_probs(probs))
    assert math.isclose(logprob, math.log(probs[token]), rel_tol=1e-5)
    assert [t for t, _ in top] == [0, 1]
    assert math.isclose(top[0][1], math.log(0.5), rel_tol=1e-5) and top[0][1] >= top[1][1]
    (_, no_logprob, no_top), = Batch(4).add(temperature=0).step(logits_from_probs(probs))
    assert no_logprob is None and no_top is None


def test_tiny_temperatures_and_fully_banned_rows_fall_back_to_argmax(kernels):
    huge = FLAT * 1e30  # / a tiny temperature overflows float32 unless the sampler shifts by the max first
    for params in (dict(temperature=1e-9), dict(temperature=1e-9, top_k=5), dict(temperature=1e-9, top_p=0.5)):
        assert one(3, huge, seed=0, **params) == [int(FLAT.argmax())] * 3, params

    def ban_all(output_ids, row):
        return torch.full_like(row, float("-inf"))

    for params in (dict(temperature=1.0), dict(temperature=1.0, top_k=5)):
        (token, _, _), = Batch().add(seed=0, logits_processors=[ban_all], **params).step(FLAT)
        assert 0 <= token < VOCAB  # nothing is allowed: a valid id rather than a crash or garbage


def test_blocked_top_candidates_equal_torch_topk():
    x = torch.randn(6, 4096, generator=torch.Generator().manual_seed(8))
    x[2, :64] = 50.0 + torch.arange(64.0)  # the best tokens crowded into two blocks
    for k in (1, 5, 31):
        vals, ids = top_candidates(x, k)
        want = torch.topk(x, k, dim=-1)
        assert torch.equal(vals, want.values) and torch.equal(ids, want.indices)


def test_blocked_argmax_equals_torch_argmax_ties_and_nan_included():
    x = torch.randn(7, 32768, generator=torch.Generator().manual_seed(9))
    x[1, [300, 5, 7000]] = 99.0  # ties: the first index wins
    x[2, 1000], x[2, 20000] = float("nan"), 1e9  # NaN counts as the largest, as in torch.argmax
    x[3, -1] = float("inf")
    x[4] = 0.0  # all equal
    x[5, :] = float("-inf")
    assert torch.equal(argmax_rows(x), x.argmax(-1))
    assert torch.equal(argmax_rows(x[:1]), x[:1].argmax(-1))
    odd = torch.randn(3, VOCAB)  # not a multiple of the block: torch's own argmax
    assert torch.equal(argmax_rows(odd), odd.argmax(-1))
