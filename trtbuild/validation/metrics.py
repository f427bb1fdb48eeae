"""Accuracy metrics: an engine's outputs against the reference's on the same prompts.

Every function here is pure (token ids, log-probability arrays or strings in, numbers out), so each
definition can be checked on hand-made inputs. docs/validation.md explains them for users.

Three families, from the strictest to the most forgiving:
  greedy agreement    did the engine generate exactly the reference's tokens?
  teacher-forced      fed the reference's own continuation, how close are the engine's next-token
                      distributions at every position? (separates "different but close" from "broken":
                      one flipped near-tie changes every later greedy token, but barely moves these)
  text similarity     how much of the reference's text does the engine's text share (ROUGE)?
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# A log-probability below this is "impossible" (p < 1e-4342): NaN, -inf and +inf from a broken engine are
# replaced by it, so a broken row shows up as an enormous but finite KL that JSON can hold.
LOGPROB_FLOOR = -1e4


# --- greedy agreement ---------------------------------------------------------------------------

def first_divergence(engine: Sequence[int], reference: Sequence[int]) -> int | None:
    """Index of the first generated token where the engine differs from the reference; None when the two
    sequences are identical. If one is a prefix of the other they diverge where the shorter one ends."""
    for i, (a, b) in enumerate(zip(engine, reference)):
        if a != b:
            return i
    return None if len(engine) == len(reference) else min(len(engine), len(reference))


# A greedy choice the reference makes by less than this many nats is a tie between correct implementations:
# rounding the tiny model's weights to fp16 alone moves its log-probabilities by up to 0.05
# (tests/test_runtime.py), and where such near-ties fall differs with the weights, so from CPU to CPU.
NEAR_TIE_NATS = 0.05


def divergence_margin(reference_logprobs, reference_tokens: Sequence[int], engine_tokens: Sequence[int],
                      at: int | None) -> float | None:
    """How many nats the reference preferred its own token over the engine's at the first divergence `at`
    (teacher-forced reference log-probabilities, [positions, vocab]); None when there is no pair of
    tokens to compare there (identical sequences, or one of them ended)."""
    if at is None or at >= len(reference_tokens) or at >= len(engine_tokens):
        return None
    row = np.asarray(reference_logprobs)[at]
    return float(row[reference_tokens[at]] - row[engine_tokens[at]])


def matching_tokens(engine: Sequence[int], reference: Sequence[int]) -> int:
    """How many positions hold the same token in both sequences (compared position by position)."""
    return sum(1 for a, b in zip(engine, reference) if a == b)


def token_agreement(engine: Sequence[int], reference: Sequence[int]) -> float:
    """Fraction of the reference's generated tokens that the engine reproduced at the same position:
    matching_tokens / len(reference). 1.0 only when the engine generated (at least) the reference's
    sequence; tokens the engine adds after the reference's end do not count."""
    return matching_tokens(engine, reference) / len(reference) if reference else float(not engine)


# --- teacher-forced agreement -------------------------------------------------------------------

def clean_logprobs(logprobs) -> np.ndarray:
    """float64 copy with NaN/inf replaced by LOGPROB_FLOOR (and values clipped from below at it)."""
    rows = np.asarray(logprobs, dtype=np.float64)
    rows = np.nan_to_num(rows, nan=LOGPROB_FLOOR, posinf=LOGPROB_FLOOR, neginf=LOGPROB_FLOOR)
    return np.maximum(rows, LOGPROB_FLOOR)


def kl_divergence(p_logprobs, q_logprobs) -> np.ndarray:
    """Per-row KL(P || Q) = sum_v p(v) * (log p(v) - log q(v)) in nats, from log-probability rows
    [..., vocab]. With P the reference and Q the engine it weighs each error by how likely the reference
    thinks the token is: the engine is punished for missing what the reference expects."""
    log_p, log_q = clean_logprobs(p_logprobs), clean_logprobs(q_logprobs)
    p = np.exp(log_p)
    # KL >= 0; float rounding of two nearly equal rows can give -1e-9, which would read as nonsense.
    return np.maximum(np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1), 0.0)


@dataclass
class TeacherForced:
    """Teacher-forced comparison of one prompt: both models score the reference's continuation."""

    positions: int  # scored positions = reference tokens
    top1: float  # fraction of positions where engine and reference rank the same token first
    mean_kl: float  # mean over positions of KL(reference || engine), nats
    max_kl: float  # worst position
    mean_logprob_diff: float  # mean |log p_engine(t) - log p_reference(t)| of the reference's token t
    nonfinite: int  # positions where the engine returned NaN or +-inf log-probabilities


def teacher_forced(reference_logprobs, engine_logprobs, reference_tokens: Sequence[int]) -> TeacherForced:
    """Compare two [positions, vocab] log-probability arrays of the same teacher-forced continuation."""
    raw_engine = np.asarray(engine_logprobs)
    ref, eng = clean_logprobs(reference_logprobs), clean_logprobs(raw_engine)
    if ref.shape != eng.shape or ref.shape[0] != len(reference_tokens):
        raise ValueError(f"score shapes differ: reference {ref.shape}, engine {eng.shape}, "
                         f"{len(reference_tokens)} tokens")
    if not len(reference_tokens):
        return TeacherForced(0, 1.0, 0.0, 0.0, 0.0, 0)
    kl = kl_divergence(ref, eng)
    rows = np.arange(len(reference_tokens))
    tokens = np.asarray(reference_tokens)
    return TeacherForced(
        positions=len(reference_tokens),
        top1=float(np.mean(ref.argmax(-1) == eng.argmax(-1))),
        mean_kl=float(kl.mean()),
        max_kl=float(kl.max()),
        mean_logprob_diff=float(np.mean(np.abs(eng[rows, tokens] - ref[rows, tokens]))),
        nonfinite=int(np.sum(~np.isfinite(raw_engine).all(axis=-1))),
    )


# --- text similarity ----------------------------------------------------------------------------

# Chinese, Japanese and Korean are written without spaces: each of their characters is a word of its own,
# otherwise a whole CJK sentence would be one "word" and ROUGE would be all or nothing.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_ROUGE1_WORD = re.compile(rf"[{_CJK}]|[^\W_]+")


def words(text: str) -> list[str]:
    """Whitespace-separated words (case and punctuation kept), every CJK character a word of its own."""
    return _WORD.findall(text)


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def f1(overlap: float, candidate_len: int, reference_len: int) -> float:
    """Harmonic mean of precision (overlap / candidate) and recall (overlap / reference)."""
    if candidate_len == 0 and reference_len == 0:
        return 1.0
    if overlap == 0:
        return 0.0
    precision, recall = overlap / candidate_len, overlap / reference_len
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004, beta = 1) on words(): LCS length over the candidate's length (precision) and
    the reference's (recall). 1.0 for identical texts, 0.0 when no word is shared in order."""
    cand, ref = words(candidate), words(reference)
    return f1(lcs_length(cand, ref), len(cand), len(ref))


def rouge1_words(text: str) -> list[str]:
    """The rouge_score package's ROUGE-1 tokens: lower case, runs of letters/digits (any script)."""
    return _ROUGE1_WORD.findall(text.lower())


def rouge1(candidate: str, reference: str) -> float:
    """ROUGE-1 F1: unigram overlap with clipped counts (a word counts as often as it occurs in both)."""
    cand, ref = Counter(rouge1_words(candidate)), Counter(rouge1_words(reference))
    overlap = sum((cand & ref).values())
    return f1(overlap, sum(cand.values()), sum(ref.values()))


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float | None:
    total = float(sum(weights))
    return float(sum(v * w for v, w in zip(values, weights)) / total) if total else None
