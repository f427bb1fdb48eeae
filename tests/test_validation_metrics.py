"""Metric definitions, prompt parsing and the gate, on hand-made inputs (no model needed)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from trtbuild.errors import TrtbuildError
from trtbuild.validation import metrics as M
from trtbuild.validation.gate import (DEFAULT_THRESHOLDS, Thresholds, precision_keys, resolve_thresholds, run_checks,
                                      verdict)
from trtbuild.validation.prompts import bundled_prompts, load_articles, load_prompts, prompt_hash, summary_prompts


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


# --- greedy agreement ---------------------------------------------------------------------------

def test_first_divergence():
    assert M.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert M.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert M.first_divergence([9, 2, 3], [1, 2, 3]) == 0
    assert M.first_divergence([1, 2], [1, 2, 3]) == 2  # the engine stopped early
    assert M.first_divergence([1, 2, 3, 4], [1, 2, 3]) == 3  # the engine ran past the reference's EOS


def test_token_agreement_is_positionwise_over_the_reference():
    assert M.token_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert M.token_agreement([1, 9, 3, 4], [1, 2, 3, 4]) == 0.75  # a substitution costs one position
    assert M.token_agreement([2, 3, 4], [1, 2, 3, 4]) == 0.0  # a shift costs every later position
    assert M.token_agreement([1, 2], [1, 2, 3, 4]) == 0.5  # missing tokens count as misses
    assert M.token_agreement([1, 2, 3, 4, 5, 6], [1, 2, 3, 4]) == 1.0  # extra engine tokens do not count
    assert M.matching_tokens([1, 9, 3], [1, 2, 3]) == 2


# --- teacher-forced -----------------------------------------------------------------------------

def test_a_divergence_at_a_near_tie_counts_as_agreement():
    from trtbuild.validation.result import PromptResult, aggregate

    reference = np.log(np.array([[0.9, 0.05, 0.05], [0.5, 0.49, 0.01], [0.1, 0.1, 0.8]]))
    assert M.divergence_margin(reference, [0, 0, 2], [0, 1, 2], at=1) == pytest.approx(np.log(0.5 / 0.49))
    assert M.divergence_margin(reference, [0, 0, 2], [0, 0, 2], at=None) is None
    assert M.divergence_margin(reference, [0, 0, 2], [0], at=1) is None  # the engine stopped there

    def prompt(engine, margin):
        ref = [0, 0, 2, 2]
        at = M.first_divergence(engine, ref)
        return PromptResult("p", "chat", "en", 3, "sha", 4, ref, engine, "", "", engine == ref, at,
                            M.matching_tokens(engine, ref), M.token_agreement(engine, ref), 1.0,
                            divergence_margin=margin)

    tie = prompt([0, 1, 1, 1], margin=0.02)  # 0.02 nats: the reference's own choice was a coin toss
    real = prompt([0, 1, 1, 1], margin=2.0)
    assert tie.near_tie and not real.near_tie
    assert aggregate([tie], []).token_agreement == 1.0
    assert aggregate([real], []).token_agreement == 0.25  # one of four, as before
    assert aggregate([tie, real], []).token_agreement == pytest.approx(5 / 8)
    assert PromptResult.from_dict(json.loads(json.dumps(dataclasses.asdict(tie)))).near_tie


def test_kl_of_identical_distributions_is_zero_and_known_values():
    rows = log_softmax(np.random.default_rng(0).normal(size=(5, 100)))
    assert np.allclose(M.kl_divergence(rows, rows), 0.0, atol=1e-12)
    p, q = np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert M.kl_divergence(p, q)[0] == pytest.approx(expected)
    assert M.kl_divergence(q, p)[0] != pytest.approx(expected)  # KL is not symmetric: reference first
    # A token the reference rules out (p = 0) costs nothing whatever the engine says about it.
    assert M.kl_divergence([[0.0, -np.inf]], np.log([[0.5, 0.5]]))[0] == pytest.approx(math.log(2))


def test_teacher_forced_metrics():
    ref = log_softmax([[5.0, 1.0, 0.0], [0.0, 4.0, 1.0], [1.0, 0.0, 3.0]])
    same = M.teacher_forced(ref, ref, [0, 1, 2])
    assert (same.positions, same.top1, same.mean_kl, same.max_kl, same.mean_logprob_diff, same.nonfinite) == \
        (3, 1.0, 0.0, 0.0, 0.0, 0)
    engine = ref.copy()
    engine[1] = log_softmax([4.0, 0.0, 1.0])  # the engine ranks token 0 first where the reference ranks 1
    tf = M.teacher_forced(ref, engine, [0, 1, 2])
    assert tf.top1 == pytest.approx(2 / 3)
    kl1 = float(M.kl_divergence(ref[1:2], engine[1:2])[0])
    assert tf.max_kl == pytest.approx(kl1) and tf.mean_kl == pytest.approx(kl1 / 3)
    assert tf.mean_logprob_diff == pytest.approx(abs(engine[1, 1] - ref[1, 1]) / 3)


def test_teacher_forced_nonfinite_engine_rows_are_finite_failures():
    ref = log_softmax([[3.0, 0.0], [0.0, 3.0]])
    engine = ref.copy()
    engine[1] = np.nan
    tf = M.teacher_forced(ref, engine, [0, 1])
    assert tf.nonfinite == 1 and math.isfinite(tf.max_kl) and tf.max_kl > 1000
    with pytest.raises(ValueError, match="shapes differ"):
        M.teacher_forced(ref, ref[:1], [0, 1])


# --- text similarity ----------------------------------------------------------------------------

def test_lcs_and_rouge_l():
    assert M.lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (BCBA)
    assert M.lcs_length([], [1, 2]) == 0
    assert M.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert M.rouge_l("", "") == 1.0 and M.rouge_l("a b", "") == 0.0 and M.rouge_l("x y", "a b") == 0.0
    # LCS("the cat was on the mat", "the cat sat on the mat") = 5 of 6 words: P = R = F1 = 5/6
    assert M.rouge_l("the cat was on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # candidate 3 words, reference 6, LCS 3: P = 1, R = 0.5, F1 = 2/3
    assert M.rouge_l("cat on mat", "the cat sat on the mat") == pytest.approx(2 / 3)


def test_words_split_cjk_characters():
    assert M.words("Hello,  world!\nbye") == ["Hello,", "world!", "bye"]
    assert M.words("长城很长 ok") == ["长", "城", "很", "长", "ok"]
    assert M.rouge_l("长城很长", "长城很短") == pytest.approx(3 / 4)


def test_rouge1_clipped_counts():
    assert M.rouge1_words("The Cat, the HAT!") == ["the", "cat", "the", "hat"]
    # candidate {the:3, cat:1}, reference {the:1, cat:1, sat:1}: overlap = min counts = 2
    assert M.rouge1("the the the cat", "The cat sat") == pytest.approx(M.f1(2, 4, 3))
    assert M.rouge1("a b", "c d") == 0.0


# --- prompts ------------------------------------------------------------------------------------

def test_bundled_prompts_cover_the_promised_mix(tokenizer):
    prompts = bundled_prompts()
    assert 12 <= len(prompts) <= 16 and len({p.name for p in prompts}) == len(prompts)
    langs = {p.lang for p in prompts}
    assert {"en", "fr", "de", "es", "zh", "code"} <= langs
    assert sum(p.kind == "completion" for p in prompts) >= 2
    lengths = {p.name: len(p.encode(tokenizer)) for p in prompts}
    assert 250 <= max(lengths.values()) <= 384 - 0  # a long-context prompt that fits cpu-tiny's max_input_len
    chat = next(p for p in prompts if p.kind == "chat").encode(tokenizer)
    assert chat[0] == tokenizer.bos_id and 3 in chat and 4 in chat  # [INST] ... [/INST]


def test_prompt_file_and_its_errors(tmp_path, tokenizer):
    good = tmp_path / "p.jsonl"
    good.write_text('{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "name": "hi"}\n\n'
                    '{"prompt": "Once upon"}\n')
    source, prompts = load_prompts(good)
    assert source == str(good) and [p.name for p in prompts] == ["hi", "line-3"]
    assert prompts[0].max_tokens == 5 and prompts[1].kind == "completion"
    assert prompts[1].encode(tokenizer) == tokenizer.encode("Once upon")
    bad_lines = {
        '{"messages": [{"role": "user", "content": "Hi"}]}\n{"prompt": ': "p.jsonl:2: not valid JSON",
        '[1, 2]': "p.jsonl:1: expected a JSON object",
        '{"text": "hi"}': 'exactly one of "messages" and "prompt"',
        '{"prompt": "hi", "max_tokens": 0}': '"max_tokens" must be a positive integer',
        '{"messages": "hi"}': '"messages" must be a non-empty list',
        '\n\n': "holds no prompts",
    }
    for content, message in bad_lines.items():
        good.write_text(content)
        with pytest.raises(TrtbuildError, match=message) as info:
            load_prompts(good)
        assert "\n" not in str(info.value)
    with pytest.raises(TrtbuildError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")
    good.write_text('{"messages": [{"role": "assistant", "content": "Hi"}]}\n')
    _, (prompt,) = load_prompts(good)
    with pytest.raises(TrtbuildError, match=r"p.jsonl:1: cannot encode"):
        prompt.encode(tokenizer)


def test_prompt_hash_is_sha256_of_the_ids():
    import hashlib

    assert prompt_hash([1, 3, 42]) == hashlib.sha256(b"1,3,42").hexdigest()


def test_articles_file_and_truncation(tmp_path, tokenizer):
    path = tmp_path / "news.jsonl"
    long_article = " ".join(f"word{i}" for i in range(2000))
    path.write_text(json.dumps({"article": long_article, "highlights": "word1 word2"}) + "\n"
                    + json.dumps({"article": "Short news.", "highlights": "News."}) + "\n")
    source, articles = load_articles(str(path), limit=10)
    assert source == str(path) and len(articles) == 2
    prompts = summary_prompts(articles, tokenizer, max_prompt_tokens=300, max_tokens=32)
    lengths = [len(p.encode(tokenizer)) for p in prompts]
    assert 290 <= lengths[0] <= 300  # cut to the longest prefix that fits, not far below
    assert prompts[1].messages[0]["content"].endswith("Short news.") and prompts[1].references == ["News."]
    path.write_text('{"article": "x"}\n')
    with pytest.raises(TrtbuildError, match=r"news.jsonl:1: .*highlights"):
        load_articles(str(path), 5)


def test_dataset_name_offline_is_one_line_error():
    with pytest.raises(TrtbuildError, match="local JSONL") as info:
        load_articles("cnn_dailymail", 5)
    assert "\n" not in str(info.value)


# --- the gate -----------------------------------------------------------------------------------

def test_thresholds_layering_and_checks():
    fp16, fp8 = DEFAULT_THRESHOLDS["fp16"], DEFAULT_THRESHOLDS["fp8"]
    assert fp16.min_top1 > fp8.min_top1 and fp16.max_mean_kl < fp8.max_mean_kl  # stricter for fp16
    assert precision_keys({"quantization": "fp8", "kv_cache_dtype": "fp8"}) == ["fp8", "fp8-kv8"]
    assert precision_keys({"quantization": "none", "dtype": "bfloat16"}) == ["fp16", "bf16"]
    table = {"fp8": {"min_top1": 0.8, "max_kl": 3}, "fp8-kv8": {"min_top1": 0.7}}
    kv8 = resolve_thresholds({"quantization": "fp8", "kv_cache_dtype": "fp8"}, table, {"max_mean_kl": 0.5})
    assert (kv8.min_top1, kv8.max_kl, kv8.max_mean_kl, kv8.min_rouge_l) == (0.7, 3.0, 0.5, fp8.min_rouge_l)
    with pytest.raises(TrtbuildError, match="unknown threshold"):
        resolve_thresholds({}, None, {"min_topone": 0.9})
    with pytest.raises(TrtbuildError, match="non-negative number"):
        Thresholds().merged({"min_top1": "high"})

    limits = Thresholds(min_top1=0.9, max_mean_kl=0.05, min_rouge_l=0.5)
    checks = run_checks({"top1": 0.95, "mean_kl": 0.2, "rouge_l": None}, limits)
    assert [(c.threshold, c.status) for c in checks] == [("min_top1", "pass"), ("max_mean_kl", "fail"),
                                                         ("min_rouge_l", "unmeasured")]
    # A metric nobody asked for is "skipped"; one that could not be computed is "unmeasured", and that is
    # "not validated" unless the user allowed it: never a silent pass.
    unscored = run_checks({"top1": None, "rouge_l": 0.9}, limits, not_requested=frozenset({"mean_kl"}))
    assert [c.status for c in unscored] == ["unmeasured", "skipped", "pass"]
    assert verdict(unscored) == "not validated" and verdict(unscored, allow_unscored=True) == "pass"
    assert verdict(checks, allow_unscored=True) == "fail" and verdict(unscored[1:]) == "pass"
    assert checks[1].reason == "mean KL(reference || engine) 0.2 > 0.05 (max_mean_kl)"
    assert run_checks({"top1": float("nan")}, limits)[0].status == "fail"  # NaN never passes
    # Engine errors and NaN scores fail the gate even with no threshold set.
    broken = run_checks({"engine_errors": 2, "nonfinite_positions": 0}, Thresholds())
    assert [(c.threshold, c.status, c.reason) for c in broken] == \
        [("engine_errors", "fail", "the engine failed on 2 request(s) (see notes)")]
