"""The runner that spreads a step's widest work over threads (trtbuild.runtime.split), and the LM head's
vocabulary blocks on it (trtbuild.runtime.lm_head)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from trtbuild.errors import TrtbuildError
from trtbuild.runtime.lm_head import LMHead, SplitRunner

WAIT = 10.0  # seconds: only a broken runner waits this long (every wait below ends in milliseconds otherwise)


@pytest.fixture(scope="module")
def engine(engine_dirs):
    from trtbuild.runtime import load_engine

    with load_engine(engine_dirs["fp16"], device="cpu") as loaded:
        yield loaded


@pytest.fixture
def runner():
    runner = SplitRunner(helpers=1, name="test-split")
    yield runner
    runner.close()


def test_map_returns_every_piece_in_order(runner):
    for count in (1, 2, 7, 32):
        assert runner.map(lambda i: i * i, count) == [i * i for i in range(count)]


def test_the_caller_and_a_helper_both_compute_pieces(runner):
    """Each piece waits until two threads are inside a piece at once: only a runner whose helper really
    takes pieces gets through without the timeout."""
    inside, both = set(), threading.Event()
    lock = threading.Lock()

    def piece(i):
        with lock:
            inside.add(threading.current_thread().name)
            if len(inside) == 2:
                both.set()
        both.wait(WAIT)
        return threading.current_thread().name

    names = runner.map(piece, 4)
    assert both.is_set()
    assert threading.current_thread().name in names and "test-split-0" in names


def test_a_stalled_helper_does_not_stall_the_caller(runner):
    """The helper blocks inside its piece; the caller computes every piece (the helper's too, after a
    grace of about one piece) and returns the right results without waiting for it."""
    release = threading.Event()
    stalled = threading.Event()

    def piece(i):
        if threading.current_thread().name.startswith("test-split"):
            stalled.set()
            release.wait(WAIT)  # the helper hangs here until the test lets it go
            return -1  # a late result: never used
        time.sleep(0.002)
        return i

    start = time.perf_counter()
    assert runner.map(piece, 8) == list(range(8))
    took = time.perf_counter() - start
    release.set()
    assert took < WAIT / 2  # finished while the helper was still blocked (it would otherwise take WAIT)
    assert runner.map(lambda i: i + 1, 3) == [1, 2, 3]  # the released helper comes back to work


def test_an_error_in_a_piece_reaches_the_caller(runner):
    def piece(i):
        if i == 3:
            raise ValueError("piece 3 failed")
        return i

    with pytest.raises(ValueError, match="piece 3 failed"):
        runner.map(piece, 6)
    # An error only on the helper's thread: the caller computes that piece again, and it succeeds.
    flaky = lambda i: 1 / 0 if threading.current_thread().name.startswith("test-split") else i  # noqa: E731
    assert runner.map(flaky, 6) == list(range(6))


def test_close_ends_the_helpers():
    runner = SplitRunner(helpers=2, name="test-close")
    assert not [t for t in threading.enumerate() if t.name.startswith("test-close")]  # none until used
    assert runner.map(str, 3) == ["0", "1", "2"]
    threads = [t for t in threading.enumerate() if t.name.startswith("test-close")]
    assert len(threads) == 2
    runner.close()
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("vocab", [32768, 10000])  # whole blocks, and a last block of 10000 % 4096 columns
def test_the_split_lm_head_equals_the_linear_layer_and_the_same_blocks_on_one_thread(vocab, kernels):
    linear = torch.nn.Linear(64, vocab, bias=False)
    runner = SplitRunner(helpers=1, name="test-head")
    whole, blocks = LMHead(linear), LMHead(linear, SplitRunner(helpers=0))  # the same blocks, one thread
    split = LMHead(linear, runner)
    try:
        assert (whole.panels is not None) is (kernels == "c")
        assert whole.block_count == 1 and whole.runner is None  # no runner: one kernel call
        assert split.block_count == -(-vocab // LMHead.BLOCK_COLUMNS) and split.runner is runner
        for shape in ((1, 64), (3, 64), (8, 64), (2, 5, 64)):
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]))
            with torch.inference_mode():
                got, one_thread, want = split(x), blocks(x), torch.nn.functional.linear(x, linear.weight)
                unsplit = whole(x)
            assert got.shape == want.shape == unsplit.shape == (*shape[:-1], vocab)
            # float32 sums of 64 products in another order than F.linear's: ~1e-6 apart
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got, unsplit, rtol=1e-4, atol=1e-4)  # another kernel's blocking: ~1e-6
            # the same kernel on the same blocks, whichever thread ran each: bit for bit
            assert torch.equal(got, one_thread)
    finally:
        runner.close()


def test_with_the_c_kernel_a_rows_logits_do_not_depend_on_its_batch():
    """lm_head_kernel.c sums each dot product in one order whatever its tile (1-2 rows x 8-4 panels, 3-4 x 2,
    5-8 x 1, 8 rows at a time past 8, in blocks of 128 rows): a row's logits are the same bits alone, in any
    batch, at any place
    (oneDNN for several rows and MKL's GEMV for one round differently)."""
    linear = torch.nn.Linear(64, 10000, bias=False)
    runner = SplitRunner(helpers=1, name="test-invariant")
    try:
        for head in (LMHead(linear), LMHead(linear, runner)):
            assert head.panels is not None, "the C kernels did not build: is a C compiler (cc, gcc) installed?"
            x = torch.randn(13, 64, generator=torch.Generator().manual_seed(5))
            with torch.inference_mode():
                alone = torch.cat([head(x[i:i + 1]) for i in range(len(x))])
                for rows in range(2, 14):
                    assert torch.equal(head(x[:rows]), alone[:rows]), rows
                    assert torch.equal(head(x[13 - rows:]), alone[13 - rows:]), rows
                many = torch.randn(300, 64, generator=torch.Generator().manual_seed(6))  # past a 128-row block
                logits = head(many)
                for i in (0, 127, 128, 255, 256, 299):
                    assert torch.equal(logits[i:i + 1], head(many[i:i + 1])), i
    finally:
        runner.close()


def test_the_engine_uses_a_second_cpu_for_its_step_where_it_may(engine):
    cpus = len(os.sched_getaffinity(0))
    assert engine.step_threads == min(2, cpus)  # one intra-op thread (the default), this process's CPUs
    runner = engine.model.lm_head.runner
    assert (runner.helpers if runner else 0) == engine.step_threads - 1


@pytest.mark.parametrize("value", ["zero", "0", "-1", "1.5"])
def test_a_bad_thread_count_is_one_clear_error(engine_dirs, monkeypatch, value):
    from trtbuild.runtime.torch_runtime import TorchEngine

    monkeypatch.setenv("TRTBUILD_STEP_THREADS", value)
    with pytest.raises(TrtbuildError, match="TRTBUILD_STEP_THREADS=.* is not a thread count"):
        TorchEngine(engine_dirs["fp16"])


def plain_states(sampler, rows: int, **params):
    from trtbuild.runtime import SamplingParams

    return [sampler.start(SamplingParams(max_tokens=50, seed=row, temperature=0.6 + 0.2 * (row % 4), **params),
                          [1, 2], row=row) for row in range(rows)]


@pytest.mark.parametrize("vocab", [32768, 10000])
@pytest.mark.parametrize("rows", [1, 8, 32])  # the GEMV block, and oneDNN's packed blocks
def test_the_draw_inside_the_lm_head_blocks_equals_the_sampler_on_whole_logits(vocab, rows, kernels):
    """The engine's fused step (each block's draw work run by the thread that computed the block) draws
    the tokens sample() draws from the same head's whole logits, step after step: same blocks, same math.
    min_tokens bans EOS and a stop id in the second block for the first 2 steps."""
    from trtbuild.runtime.sampling import Sampler

    linear = torch.nn.Linear(64, vocab, bias=False)
    torch.nn.init.normal_(linear.weight, std=0.5, generator=torch.Generator().manual_seed(vocab))
    runner = SplitRunner(helpers=1, name="test-draw")
    head = LMHead(linear, runner)
    whole, fused = Sampler(vocab, 2, rows), Sampler(vocab, 2, rows)
    whole_states, fused_states = (plain_states(s, rows, min_tokens=2, stop_token_ids=[5000]) for s in (whole, fused))
    try:
        assert head.blocked
        for step in range(4):
            x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(step))
            with torch.inference_mode():
                want = [token for token, _, _ in whole.sample(head(x), whole_states)]
                draw = fused.plain_draw(fused_states)
                got = fused.sample_blocks(draw, head.blocks(x, draw.block), fused_states)
            assert [token for token, _, _ in got] == want
            assert all(lp is None and top is None for _, lp, top in got)
            if step < 2:
                assert not {2, 5000} & set(want)
        assert [s.output_ids for s in fused_states] == [s.output_ids for s in whole_states]
    finally:
        runner.close()


def test_only_plain_steps_draw_inside_the_lm_head():
    """plain_draw is for steps whose rows all draw from softmax(x / T) with nothing but min_tokens bans:
    any other row (greedy, top-k/top-p, logprobs, penalties, bias, a processor) sends the step to sample()."""
    from trtbuild.runtime.sampling import Sampler

    sampler = Sampler(1000, 2, 16)
    assert sampler.plain_draw(plain_states(sampler, 3, min_tokens=4, stop_token_ids=[7])) is not None
    for other in (dict(temperature=0.0), dict(top_k=5), dict(top_p=0.9), dict(logprobs=True),
                  dict(top_logprobs=2, logprobs=True), dict(frequency_penalty=0.5), dict(presence_penalty=0.5),
                  dict(repetition_penalty=1.2), dict(logit_bias={5: 1.0}), dict(logits_processors=[lambda ids, x: x])):
        states = plain_states(sampler, 3)
        params = {**vars(states[1].params), **other}
        states[1] = sampler.start(type(states[1].params)(**params), [1, 2], row=1)
        assert sampler.plain_draw(states) is None, other


def test_a_plain_draw_is_built_again_only_when_its_rows_change():
    """The step's PlainDraw is kept while its rows' temperatures and bans stay the same, and rebuilt when
    they change: the bans lift once min_tokens are out, another temperature scales differently."""
    from trtbuild.runtime import SamplingParams
    from trtbuild.runtime.draw import LOG2_E
    from trtbuild.runtime.sampling import Sampler

    def allowed(draw, token):  # the probability the draw gives `token` in every row, from flat logits
        probs, _, _ = draw.block(torch.zeros(3, 1000), 0)
        return probs[:, token].tolist()

    sampler = Sampler(1000, 2, 16)
    states = plain_states(sampler, 3, min_tokens=2, stop_token_ids=[7])
    first = sampler.plain_draw(states)
    assert sampler.plain_draw(states) is first
    assert allowed(first, 2) == allowed(first, 7) == [0.0] * 3 and allowed(first, 8) == [1.0] * 3
    sampler._record(states, [5, 5, 5])
    assert sampler.plain_draw(states) is first  # one token in: still banned
    sampler._record(states, [5, 5, 5])
    lifted = sampler.plain_draw(states)  # min_tokens are out
    assert lifted is not first and allowed(lifted, 2) == allowed(lifted, 7) == [1.0] * 3
    states[1] = sampler.start(SamplingParams(max_tokens=50, seed=1, temperature=1.5), [1, 2], row=1)
    hotter = sampler.plain_draw(states)
    assert hotter is not lifted and hotter.scale[1, 0] == pytest.approx(LOG2_E / 1.5)


def test_the_engine_draws_plain_steps_inside_its_lm_head(engine_dirs, monkeypatch):
    """With a second step thread the engine takes the fused path for plain-sampled steps and sample() for
    others; a seeded request alone draws the same tokens either way (the same blocks of the same head)."""
    from trtbuild.runtime import SamplingParams
    from trtbuild.runtime.sampling import Sampler
    from trtbuild.runtime.torch_runtime import TorchEngine

    monkeypatch.setenv("TRTBUILD_STEP_THREADS", "2")
    calls = {"sample": 0, "sample_blocks": 0}
    for name in calls:
        def counted(self, *args, _name=name, _real=getattr(Sampler, name)):
            calls[_name] += 1
            return _real(self, *args)
        monkeypatch.setattr(Sampler, name, counted)
    plain = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    with TorchEngine(engine_dirs["fp16"], device="cpu") as engine:
        prompt = engine.tokenizer.encode("The river")
        fused = engine.submit(prompt, plain).result().token_ids
        assert calls == {"sample": 0, "sample_blocks": len(fused)}  # the prefill's token too
        engine.submit(prompt, SamplingParams(max_tokens=3, temperature=0.0)).result()
        assert calls["sample"] == 3
        monkeypatch.setattr(engine._sampler, "plain_draw", lambda states: None)
        assert engine.submit(prompt, plain).result().token_ids == fused
