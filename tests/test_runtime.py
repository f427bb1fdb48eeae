"""The torch runtime on the embedded model's fp16 engine: exactness against transformers, batching,
seeded sampling, cancellation, limits, failures, scoring and the runtime package's entry points."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse: one intra-op thread for this module)

from trtbuild.errors import TrtbuildError
from trtbuild.runtime import ContextLengthExceeded, EngineError, SamplingParams, load_engine, load_reference
from trtbuild.runtime.torch_runtime import TorchEngine

QUESTIONS = ["What is the capital of France?", "Which city is the capital of Denmark?", "What is machine learning?",
             "Repeat after me: the quick brown fox.", "Write a Python function that returns the square of a number.",
             "Summarize the story of Little Red Riding Hood in one sentence."]
PLAIN = ["Once upon a time", "The capital of France is"]
MAX_TOKENS = 24
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    """Eight prompts of different lengths: six chat turns and two plain-text completions."""
    chats = [tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    return chats + [tokenizer.encode(text) for text in PLAIN]


@pytest.fixture(scope="module")
def engine(engine_dirs):
    with load_engine(engine_dirs["fp16"], device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_greedy(hf_model, prompts, tokenizer) -> list[list[int]]:
    """transformers' own generate() on the source checkpoint: greedy, up to and including EOS."""
    outputs = []
    for ids in prompts:
        with torch.inference_mode():
            out = hf_model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                                    eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.eos_id)
        tokens = out[0, len(ids):].tolist()
        outputs.append(tokens[:tokens.index(tokenizer.eos_id) + 1] if tokenizer.eos_id in tokens else tokens)
    return outputs


def test_load_engine_reports_a_torch_engine_with_manifest_limits(engine, engine_dirs, profile):
    settings = profile.variants["fp16"]
    info = engine.info
    assert isinstance(engine, TorchEngine)
    assert (info.backend, info.variant, info.can_score) == ("torch", "fp16", True)
    assert (info.max_batch_size, info.max_seq_len, info.max_input_len) == (
        settings.max_batch_size, settings.max_seq_len, settings.max_input_len)
    assert info.precision["weights"] == "float16" and info.precision["compute_dtype"] == "float32"
    assert engine.model.net.model.embed_tokens.weight.dtype == torch.float32


def test_the_cpu_lm_head_kernels_equal_the_linear_layer(engine):
    head = engine.model.lm_head  # the C kernel (built by the engine at load, where a compiler is)
    assert head.panels is not None and head.block_count == (8 if head.runner else 1)
    weight = engine.model.net.lm_head.weight
    for shape in ((1, 256), (3, 256), (8, 256), (2, 5, 256)):
        x = torch.randn(*shape[:-1], weight.shape[1], generator=torch.Generator().manual_seed(len(shape)))
        with torch.inference_mode():
            got, want = head(x), torch.nn.functional.linear(x, weight)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_attention_equals_grouped_query_attention(batch):
    """attend() runs a decode step's query heads as rows of one attention per KV head: what enable_gqa
    computes (query head h reads KV head h // 4 here), with each row's own length in the mask."""
    from trtbuild.runtime.torch_runtime import attend

    gen = torch.Generator().manual_seed(batch)
    keys, values = torch.randn(batch, 2, 40, 32, generator=gen), torch.randn(batch, 2, 40, 32, generator=gen)
    for n in (1, 3):  # a decode step, and several new tokens (the general path)
        q = torch.randn(batch, 8, n, 32, generator=gen)
        positions = torch.tensor([[39 - 5 * b - (n - 1) + j for j in range(n)] for b in range(batch)])
        mask = torch.arange(40)[None, None, None, :] <= positions[:, None, :, None]
        want = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        # 1e-6: float32 sums of 40 terms, blocked differently by the two kernels (the results are ~1)
        torch.testing.assert_close(attend(q, keys, values, mask), want, rtol=0, atol=1e-6)


def test_greedy_alone_equals_transformers_generate(engine, prompts, hf_greedy):
    for ids, expected in list(zip(prompts, hf_greedy))[::3]:
        result = engine.generate([ids], GREEDY)[0]
        assert result.token_ids == expected
        assert result.finish_reason == ("stop" if expected[-1] == engine.tokenizer.eos_id else "length")


def test_greedy_in_a_batch_of_8_equals_transformers_generate(engine, prompts, hf_greedy):
    results = engine.generate(prompts, GREEDY)
    assert [r.token_ids for r in results] == hf_greedy
    assert len({len(p) for p in prompts}) > 4  # different lengths share each forward pass
    # All eight were running together: every one was scheduled before the first one finished.
    assert max(r.timings.scheduled_ns for r in results) < min(r.timings.finished_ns for r in results)
    assert any(len(r.token_ids) > 8 for r in results)


def test_a_burst_is_prefilled_in_groups_within_the_token_budget(engine, prompts, hf_greedy, monkeypatch):
    groups = []
    prefill_group = engine._prefill_group
    monkeypatch.setattr(engine, "_prefill_group", lambda group: groups.append(group) or prefill_group(group))
    budget = 3 * max(len(p) for p in prompts)
    monkeypatch.setattr(engine, "prefill_tokens", budget)
    with engine._cv:  # all eight are waiting when the engine thread next looks: one admission, one burst
        streams = [engine.submit(ids, GREEDY) for ids in prompts]
    assert [s.result().token_ids for s in streams] == hf_greedy
    sizes = [len(g) for g in groups]
    assert sum(sizes) == len(prompts) and len(sizes) > 1
    assert all(len(g) * max(len(r.prompt) for r in g) <= budget for g in groups)
    lengths = [len(r.prompt) for g in groups for r in g]
    assert lengths == sorted(lengths)  # shortest prompts first: their first tokens come soonest


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(engine, prompts):
    seeded = SamplingParams(max_tokens=20, temperature=1.5, seed=1234, ignore_eos=True)
    alone = engine.generate([prompts[2]], seeded)[0].token_ids
    again = engine.generate([prompts[2]], seeded)[0].token_ids
    others = [SamplingParams(max_tokens=30, temperature=t, seed=s, ignore_eos=True)
              for t, s in [(0, None), (1.0, 5), (0.7, None), (1.9, 77), (1.0, 1234), (0, None), (1.2, 8)]]
    batch = engine.generate([prompts[2], *prompts[:2], *prompts[3:]], [seeded, *others])
    other_seed = engine.generate([prompts[2]], SamplingParams(max_tokens=20, temperature=1.5, seed=4321,
                                                             ignore_eos=True))[0].token_ids
    assert alone == again == batch[0].token_ids
    assert alone != other_seed


def test_cancelling_a_stream_stops_it_and_the_batch_carries_on(engine, prompts):
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    solo = [r.token_ids for r in engine.generate(prompts[1:4], params)]
    victim = engine.submit(prompts[0], SamplingParams(max_tokens=400, temperature=0, ignore_eos=True))
    others = [engine.submit(p, params) for p in prompts[1:4]]
    for event in victim:
        if event.index == 2:
            break
    victim.cancel()
    produced = len(victim.token_ids)
    results = [s.result(timeout=120) for s in others]
    assert [r.token_ids for r in results] == solo
    assert all(r.finish_reason == "length" for r in results)
    assert victim.result().finish_reason == "abort"
    assert len(victim.token_ids) == produced < 10
    # Its slot was freed: with 400 tokens to go it would still be running if it had not been dropped.
    deadline = time.monotonic() + 10
    while engine.num_running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.num_running == 0 and engine.num_waiting == 0


def test_logprobs_while_generating_equal_teacher_forced_scores(engine, prompts):
    result = engine.generate([prompts[1]], SamplingParams(max_tokens=12, temperature=0, logprobs=True,
                                                          top_logprobs=3, ignore_eos=True))[0]
    scores = engine.score(prompts[1], result.token_ids)
    chosen = scores[np.arange(len(result.token_ids)), result.token_ids]
    np.testing.assert_allclose(result.logprobs, chosen, atol=1e-4)  # cached decode == one full forward
    assert [top[0][0] for top in result.top_logprobs] == result.token_ids  # greedy picks the best
    assert all(len(top) == 3 for top in result.top_logprobs)


def test_score_matches_the_transformers_reference(engine, hf_model, prompts, hf_greedy):
    prompt, continuation = prompts[0], hf_greedy[0]
    scores = engine.score(prompt, continuation)
    with torch.inference_mode():
        logits = hf_model(torch.tensor([prompt + continuation])).logits[0, len(prompt) - 1: -1]
    reference = torch.log_softmax(logits.float(), dim=-1).numpy()
    assert scores.shape == reference.shape == (len(continuation), engine.info.vocab_size)
    assert (scores.argmax(-1) == reference.argmax(-1)).all()
    assert np.abs(scores - reference).max() < 0.05  # fp16-rounded weights vs the fp32 source


def test_engine_limits(engine, tokenizer):
    info = engine.info
    with pytest.raises(ContextLengthExceeded, match="maximum context length"):
        engine.submit([1] * (info.max_input_len + 1), GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit([1, info.vocab_size], GREEDY)
    with pytest.raises(ValueError, match="top_p"):
        engine.submit([1, 2], SamplingParams(top_p=0))
    # A prompt at max_input_len runs until the sequence fills max_seq_len, then ends with "length".
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)
    long_prompt = tokenizer.encode(text)[: info.max_input_len]
    result = engine.generate([long_prompt], SamplingParams(max_tokens=info.max_seq_len, temperature=0,
                                                           ignore_eos=True))[0]
    assert result.finish_reason == "length"
    assert len(long_prompt) + len(result.token_ids) == info.max_seq_len


def test_stop_strings_and_streaming_through_the_engine(engine, prompts, hf_greedy, tokenizer):
    full = tokenizer.decode(hf_greedy[0])
    stop = full.split()[2]  # a word in the middle of the greedy reply
    stream = engine.submit(prompts[0], SamplingParams(max_tokens=MAX_TOKENS, temperature=0, stop=[stop]))
    streamed = "".join(event.text for event in stream)
    result = stream.result()
    assert (result.finish_reason, result.stop_reason) == ("stop", stop)
    assert streamed == result.text == full[:full.index(stop)]


def test_fatal_error_fails_requests_and_later_submits(engine_dirs, prompts):
    broken = load_engine(engine_dirs["fp16"], device="cpu")
    try:
        def explode(*args, **kwargs):
            raise RuntimeError("simulated device failure")
        broken.model.hidden = explode  # the engine's step runs the model up to the LM head with it
        result = broken.submit(prompts[0], GREEDY).result(timeout=30)
        assert result.finish_reason == "error" and "simulated device failure" in result.error
        with pytest.raises(EngineError, match="simulated device failure"):
            broken.submit(prompts[0], GREEDY)
    finally:
        broken.close()


def test_close_aborts_requests_in_flight(engine_dirs, prompts):
    closing = load_engine(engine_dirs["fp16"], device="cpu")
    stream = closing.submit(prompts[0], SamplingParams(max_tokens=400, temperature=0, ignore_eos=True))
    next(iter(stream))  # it is running
    closing.close()
    assert stream.result(timeout=30).finish_reason == "abort"
    with pytest.raises(EngineError, match="closed"):
        closing.submit(prompts[0], GREEDY)


def test_load_reference_and_bad_engine_dirs(tiny_model, tmp_path, prompts, hf_greedy):
    with load_reference(tiny_model.path) as reference:
        assert reference.info.backend == "transformers"
        # Both are transformers in float32 on this CPU: only ~1e-6 noise apart, no greedy tie that close.
        assert reference.generate([prompts[1]], GREEDY)[0].token_ids == hf_greedy[1]
    with pytest.raises(TrtbuildError, match="manifest.json"):
        load_engine(tmp_path)
