"""The accuracy gate: thresholds per precision, and the checks that turn metrics into a verdict.

Thresholds come from three layers, later ones winning:
  1. DEFAULT_THRESHOLDS below (measured on the embedded model; see docs/validation.md),
  2. the profile's [validation.<precision>] table (e.g. looser greedy agreement for the 7B, whose BF16
     GPU reference and FP16 engine legitimately flip near-ties),
  3. command-line options (--min-top1 0.95 ...).
A precision key names a class of engine: "fp16", "bf16", "fp8", "fp8-kv8"; an engine reads the most
general table first and the most specific last (fp8-kv8 engines: fp8, then fp8-kv8).
A threshold set to None is not checked. A check whose metric was not asked for (the summarization
check without --summarize) is "skipped". A check whose metric could not be computed (no scores from a
TensorRT-LLM engine built without gather_context_logits) is "unmeasured": never passed, and it makes the
verdict "not validated" (exit 5) unless the user explicitly allowed it (--allow-unscored): see verdict().
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from trtbuild.errors import TrtbuildError

PRECISION_KEYS = ("fp16", "bf16", "fp8", "fp8-kv8")


@dataclass
class Thresholds:
    min_exact_match: float | None = None  # fraction of prompts generated exactly like the reference
    min_token_agreement: float | None = None  # fraction of the reference's tokens reproduced in place
    min_top1: float | None = None  # teacher-forced top-1 agreement
    max_mean_kl: float | None = None  # mean KL(reference || engine), nats per position
    max_kl: float | None = None  # worst position's KL
    max_mean_logprob_diff: float | None = None  # mean |delta log p| of the reference's token
    min_rouge_l: float | None = None  # mean ROUGE-L F1 of engine text against reference text
    max_rouge1_drop: float | None = None  # summarization: reference ROUGE-1 minus engine ROUGE-1, points

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "thresholds") -> Thresholds:
        return cls().merged(data, where)

    def merged(self, overrides: dict, where: str = "thresholds") -> Thresholds:
        """A copy with the given (non-None) values replaced; unknown names or non-numbers are errors."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise TrtbuildError(f"{where}: unknown threshold(s) {sorted(unknown)}; known: {', '.join(sorted(names))}")
        values = {}
        for name, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise TrtbuildError(f"{where}: {name} must be a non-negative number, got {value!r}")
            values[name] = float(value)
        return dataclasses.replace(self, **values)


# Chosen from measurements on builtin:tiny-mistral (docs/validation.md has the tables): each limit sits
# several times above the error that FP16 or FP8 rounding alone causes, and well below what engines damaged
# on purpose score (one layer's weight_scale x1.25 or its q/k/v inputs clipped by input_scale / 8, and
# worse). Mean KL separates them best: FP8 0.002-0.004 nats, the mildest damage 0.02, the limit 0.01.
# fp16 reproduces the FP32 reference token for token, so it is held to near-exact agreement. The 7B on a GPU
# (BF16 reference) gets looser greedy limits in the h100-mistral-7b profile.
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp16": Thresholds(min_token_agreement=0.99, min_top1=0.99, max_mean_kl=0.001, max_kl=0.05,
                       max_mean_logprob_diff=0.01, min_rouge_l=0.98, max_rouge1_drop=1.0),
    # Greedy agreement and ROUGE-L only catch gross breakage of the decode path (which scoring does not
    # run): FP8 rounding alone scored 0.45-0.81 token agreement on two builds of the same tiny recipe.
    "fp8": Thresholds(min_token_agreement=0.25, min_top1=0.9, max_mean_kl=0.01, max_kl=0.5,
                      max_mean_logprob_diff=0.1, min_rouge_l=0.4, max_rouge1_drop=2.0),
    # The FP8 KV cache rounds every cached key and value as well: on the bundled set it roughly triples
    # the mean KL. The tiny model trains to other weights on another CPU, and its KV sensitivity varies:
    # mean KL 0.004-0.014 on four builds on one CPU model, 0.022 (worst position 0.52) on another. The
    # limits sit above that spread and below damage + KV (the mildest damage alone adds ~0.02).
    "fp8-kv8": Thresholds(min_token_agreement=0.25, min_top1=0.9, max_mean_kl=0.035, max_kl=1.0,
                          max_mean_logprob_diff=0.1, min_rouge_l=0.4, max_rouge1_drop=2.0),
}


def precision_keys(build: dict) -> list[str]:
    """Threshold tables that apply to an engine built with these BuildSettings, general first."""
    if build.get("quantization") == "fp8":
        return ["fp8", "fp8-kv8"] if build.get("kv_cache_dtype") == "fp8" else ["fp8"]
    return ["fp16", "bf16"] if build.get("dtype") == "bfloat16" else ["fp16"]


def resolve_thresholds(build: dict, profile_table: dict | None = None, overrides: dict | None = None) -> Thresholds:
    """Defaults, then the profile's [validation.<key>] tables, then explicit overrides."""
    keys = precision_keys(build)
    thresholds = Thresholds()
    for key in keys:
        if key in DEFAULT_THRESHOLDS:
            thresholds = DEFAULT_THRESHOLDS[key]
    for key in keys:
        table = (profile_table or {}).get(key)
        if table is not None:
            if not isinstance(table, dict):
                raise TrtbuildError(f"profile [validation.{key}] must be a table of thresholds")
            thresholds = thresholds.merged(table, f"profile [validation.{key}]")
    return thresholds.merged(overrides or {}, "threshold options")


def split_threshold_arg(thresholds: dict | Thresholds | None) -> tuple[dict | None, dict | None, Thresholds | None]:
    """validate_engine's `thresholds` argument: a Thresholds, a profile's validation table (keyed by
    precision) or flat overrides -> (profile table, overrides, fixed thresholds)."""
    if thresholds is None or isinstance(thresholds, Thresholds):
        return None, None, thresholds
    if thresholds and all(key in PRECISION_KEYS for key in thresholds):
        return thresholds, None, None
    return None, thresholds, None


@dataclass
class Check:
    threshold: str  # Thresholds field name
    metric: str  # Metrics field name
    limit: float
    value: float | None
    status: str  # "pass" | "fail" | "unmeasured" (metric could not be computed) | "skipped" (not asked for)
    reason: str  # one line, shown when it fails


VERDICTS = ("pass", "fail", "not validated")


def verdict(checks: list, allow_unscored: bool = False) -> str:
    """"fail" when any check failed; "not validated" when a set threshold could not be checked (its metric
    was not measured) and the user did not allow that; else "pass"."""
    if any(c.status == "fail" for c in checks):
        return "fail"
    if any(c.status == "unmeasured" for c in checks) and not allow_unscored:
        return "not validated"
    return "pass"


# threshold -> (metric, is the threshold a minimum?, what the metric is called in messages)
CHECKS = {
    "min_exact_match": ("exact_match", True, "greedy exact-match rate"),
    "min_token_agreement": ("token_agreement", True, "greedy token agreement"),
    "min_top1": ("top1", True, "teacher-forced top-1 agreement"),
    "max_mean_kl": ("mean_kl", False, "mean KL(reference || engine)"),
    "max_kl": ("max_kl", False, "max KL(reference || engine)"),
    "max_mean_logprob_diff": ("mean_logprob_diff", False, "mean |logprob difference| of the reference token"),
    "min_rouge_l": ("rouge_l", True, "ROUGE-L F1 against the reference's text"),
    "max_rouge1_drop": ("rouge1_drop", False, "summarization ROUGE-1 drop below the reference (points)"),
}


# Counts that fail the gate whenever they are not zero, whatever the thresholds.
MUST_BE_ZERO = {"engine_errors": "the engine failed on {} request(s) (see notes)",
                "nonfinite_positions": "the engine returned NaN/inf log-probabilities at {} position(s)"}


def run_checks(metrics: dict, thresholds: Thresholds, not_requested: frozenset[str] = frozenset()) -> list[Check]:
    """A failed Check for each MUST_BE_ZERO count that is not zero, then one Check per set threshold in
    CHECKS order. metrics: the aggregate Metrics as a dict; not_requested: metrics the user did not ask
    for (their checks are "skipped"; any other missing metric is "unmeasured")."""
    checks = [Check(name, name, 0, metrics[name], "fail", why.format(metrics[name]))
              for name, why in MUST_BE_ZERO.items() if metrics.get(name)]
    for name, (metric, is_min, label) in CHECKS.items():
        limit = getattr(thresholds, name)
        if limit is None:
            continue
        value = metrics.get(metric)
        if value is None:
            status, why = ("skipped", "not asked for") if metric in not_requested else ("unmeasured", "could not be computed")
            checks.append(Check(name, metric, limit, None, status, f"{label}: {why} ({name})"))
            continue
        ok = value >= limit if is_min else value <= limit
        sign = (">=" if is_min else "<=") if ok else ("<" if is_min else ">")
        checks.append(Check(name, metric, limit, value, "pass" if ok else "fail",
                            f"{label} {value:.4g} {sign} {limit:g} ({name})"))
    return checks
