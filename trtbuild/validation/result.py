"""What a validation run produces: per-prompt results, aggregate metrics, the verdict; JSON and a table.

<engine>/validation.json holds ValidationResult.to_dict(); the engine's manifest points at it
(manifest.results["validation"]). load_validation(engine_dir) reads it back for reports and selection.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from trtbuild.errors import EngineNotValidated, TrtbuildError, ValidationFailed
from trtbuild.validation.gate import Check, Thresholds, verdict
from trtbuild.validation.metrics import NEAR_TIE_NATS, TeacherForced, weighted_mean

RESULT_FILE = "validation.json"
# Bump when ValidationResult changes shape; older files then count as "not validated". The verdict
# "not validated" and allow_unscored (issue 11) kept version 1: allow_unscored defaults to False, and a
# version-1 file could only skip teacher-forced checks for a TensorRT-LLM engine, which no version-1
# trtbuild ever ran.
SCHEMA_VERSION = 1


@dataclass
class PromptResult:
    name: str
    kind: str  # chat | completion | summary
    lang: str
    prompt_tokens: int
    prompt_sha256: str  # trtbuild.validation.prompts.prompt_hash of the prompt's token ids
    max_tokens: int
    reference_token_ids: list[int]
    engine_token_ids: list[int]
    reference_text: str
    engine_text: str
    exact_match: bool
    first_divergence: int | None  # None: identical sequences
    matching_tokens: int  # positions where the engine's token equals the reference's
    token_agreement: float  # matching_tokens / len(reference_token_ids)
    rouge_l: float
    teacher_forced: TeacherForced | None = None  # None when the engine cannot score
    summary_references: list[str] | None = None  # summaries only: the human-written summaries
    rouge1_engine: float | None = None  # summaries only: best ROUGE-1 F1 against summary_references
    rouge1_reference: float | None = None
    divergence_margin: float | None = None  # reference's preference for its token at the divergence, nats

    @property
    def near_tie(self) -> bool:
        """The sequences parted where the reference itself nearly tied: both continuations are correct."""
        return self.divergence_margin is not None and self.divergence_margin <= NEAR_TIE_NATS

    @classmethod
    def from_dict(cls, data: dict) -> PromptResult:
        data = dict(data)
        tf = data.pop("teacher_forced", None)
        return cls(**data, teacher_forced=TeacherForced(**tf) if tf else None)


@dataclass
class Metrics:
    """Aggregates over all prompts (docs/validation.md defines each one)."""

    prompts: int
    exact_match: float  # fraction of prompts with identical greedy outputs
    mean_first_divergence: float  # mean first differing position (the sequence length when identical)
    token_agreement: float  # matching positions / reference tokens, over all prompts
    rouge_l: float  # mean ROUGE-L F1
    reference_tokens: int
    engine_tokens: int
    teacher_forced_positions: int = 0
    top1: float | None = None  # teacher-forced metrics: position-weighted over all prompts
    mean_kl: float | None = None
    max_kl: float | None = None
    mean_logprob_diff: float | None = None
    nonfinite_positions: int = 0
    engine_errors: int = 0  # requests that ended with finish_reason "error" (their messages are in notes)
    summaries: int = 0  # summarization check, TensorRT-LLM's way (ROUGE-1 F1 in points, 0-100)
    rouge1_engine: float | None = None
    rouge1_reference: float | None = None
    rouge1_drop: float | None = None


def aggregate(prompts: list[PromptResult], summaries: list[PromptResult]) -> Metrics:
    # After a near-tie the two texts part legitimately: the prompt counts as agreeing in full.
    agreement_tokens = sum(len(p.reference_token_ids) if p.near_tie else p.matching_tokens for p in prompts)
    reference_tokens = sum(len(p.reference_token_ids) for p in prompts)
    metrics = Metrics(
        prompts=len(prompts),
        exact_match=sum(p.exact_match for p in prompts) / len(prompts),
        mean_first_divergence=sum(len(p.reference_token_ids) if p.first_divergence is None else p.first_divergence
                                  for p in prompts) / len(prompts),
        token_agreement=agreement_tokens / reference_tokens if reference_tokens else 1.0,
        rouge_l=sum(p.rouge_l for p in prompts) / len(prompts),
        reference_tokens=reference_tokens,
        engine_tokens=sum(len(p.engine_token_ids) for p in prompts),
    )
    scored = [p.teacher_forced for p in prompts if p.teacher_forced is not None]
    if scored and len(scored) == len(prompts):
        weights = [tf.positions for tf in scored]
        metrics.teacher_forced_positions = sum(weights)
        metrics.top1 = weighted_mean([tf.top1 for tf in scored], weights)
        metrics.mean_kl = weighted_mean([tf.mean_kl for tf in scored], weights)
        metrics.max_kl = max(tf.max_kl for tf in scored)
        metrics.mean_logprob_diff = weighted_mean([tf.mean_logprob_diff for tf in scored], weights)
        metrics.nonfinite_positions = sum(tf.nonfinite for tf in scored)
    if summaries:
        metrics.summaries = len(summaries)
        metrics.rouge1_engine = 100 * sum(s.rouge1_engine for s in summaries) / len(summaries)
        metrics.rouge1_reference = 100 * sum(s.rouge1_reference for s in summaries) / len(summaries)
        metrics.rouge1_drop = metrics.rouge1_reference - metrics.rouge1_engine
    return metrics


@dataclass
class ValidationResult:
    engine: str  # engine directory name
    engine_dir: str
    engine_key: str
    variant: str
    backend: str
    precision: dict
    threshold_keys: list[str]  # the [validation.<key>] tables that applied, general first
    reference: dict  # model_id, revision, path, backend, dtype, device, files_sha256
    prompt_set: str  # "bundled" or the file read
    summary_set: str | None
    max_tokens: int
    metrics: Metrics
    thresholds: Thresholds
    checks: list[Check]
    available: dict[str, bool]  # metric family -> could this engine supply it
    notes: list[str]  # what was skipped or unavailable, in words
    prompts: list[PromptResult]
    summaries: list[PromptResult]
    versions: dict
    started_at: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    passed: bool = False
    allow_unscored: bool = False  # the user let skipped checks (metrics not measured) pass: --allow-unscored
    schema_version: int = SCHEMA_VERSION

    @property
    def verdict(self) -> str:
        return verdict(self.checks, self.allow_unscored)

    @property
    def unmeasured(self) -> list[str]:
        return [c.reason for c in self.checks if c.status == "unmeasured"]

    @property
    def failures(self) -> list[str]:
        """One reason per failed check; for a "not validated" engine, each check that could not run."""
        failed = [c.reason for c in self.checks if c.status == "fail"]
        return failed or (self.unmeasured if self.verdict == "not validated" else [])

    def raise_if_failed(self) -> None:
        """ValidationFailed (exit code 3) naming every failed threshold, on one line; EngineNotValidated
        (exit code 5) when the gate's metrics could not be computed and the user did not allow it."""
        if self.verdict == "not validated":
            raise EngineNotValidated(f"engine {self.engine} is not validated: " + "; ".join(self.failures)
                                     + (f" ({self.notes[0]})" if self.notes else "")
                                     + "; pass --allow-unscored to accept it on the remaining checks")
        if not self.passed:
            raise ValidationFailed(f"engine {self.engine} failed validation: " + "; ".join(self.failures))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["verdict"], data["failures"] = self.verdict, self.failures
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ValidationResult:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["metrics"] = Metrics(**data["metrics"])
        data["thresholds"] = Thresholds(**data["thresholds"])
        data["checks"] = [Check(**c) for c in data["checks"]]
        data["prompts"] = [PromptResult.from_dict(p) for p in data["prompts"]]
        data["summaries"] = [PromptResult.from_dict(p) for p in data["summaries"]]
        return cls(**data)


def load_validation(engine_dir: str | Path) -> ValidationResult | None:
    """The engine's last validation result; None when it was never validated, or was validated by a
    trtbuild whose result format differs (validate it again)."""
    path = Path(engine_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("schema_version") != SCHEMA_VERSION:
            return None
        return ValidationResult.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise TrtbuildError(f"{path} is unreadable ({type(exc).__name__}: {exc}); run `trtbuild validate` again") from None


# --- the terminal table ---------------------------------------------------------------------------

def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(name: str, tokens: str, exact: str, divergence: str, agreement, rouge, tf) -> list[str]:
    return [name, tokens, exact, divergence, _num(agreement), _num(rouge),
            _num(tf and tf["top1"]), _num(tf and tf["mean_kl"], 4), _num(tf and tf["max_kl"], 4),
            _num(tf and tf["mean_logprob_diff"], 4)]


def format_table(result: ValidationResult) -> str:
    """Per-prompt rows, the aggregate row, the checks and the verdict, as plain text."""
    header = ["prompt", "tokens ref/eng", "exact", "1st diff", "tok agree", "ROUGE-L", "top-1", "mean KL",
              "max KL", "|dlogp|"]
    rows = []
    for p in result.prompts:
        tf = dataclasses.asdict(p.teacher_forced) if p.teacher_forced else None
        rows.append(_row(p.name, f"{len(p.reference_token_ids)}/{len(p.engine_token_ids)}",
                         "yes" if p.exact_match else "no", "-" if p.first_divergence is None else f"{p.first_divergence}{' tie' if p.near_tie else ''}",
                         p.token_agreement, p.rouge_l, tf))
    m = result.metrics
    tf = dataclasses.asdict(m) if m.top1 is not None else None
    rows.append(_row(f"all ({m.prompts})", f"{m.reference_tokens}/{m.engine_tokens}", f"{m.exact_match:.0%}",
                     f"{m.mean_first_divergence:.1f}", m.token_agreement, m.rouge_l, tf))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    ref = result.reference
    order = ["weights", "activations", "kv_cache"] + sorted(set(result.precision) - {"weights", "activations", "kv_cache"})
    precision = ", ".join(f"{k} {result.precision[k]}" for k in order if k in result.precision)
    out = [f"engine {result.engine} ({result.backend} backend, {result.variant}: {precision})",
           f"reference {ref.get('model_id')} ({ref.get('backend')}, {ref.get('dtype')} on {ref.get('device')}); "
           f"prompts: {result.prompt_set}, greedy, up to {result.max_tokens} tokens",
           "", line(header), line(["-" * w for w in widths]), *map(line, rows[:-1]),
           line(["-" * w for w in widths]), line(rows[-1]), ""]
    if m.summaries:
        out.append(f"summarization ({result.summary_set}, {m.summaries} articles): ROUGE-1 engine "
                   f"{m.rouge1_engine:.2f}, reference {m.rouge1_reference:.2f}, drop {m.rouge1_drop:.2f} points")
    out += [f"note: {n}" for n in result.notes]
    for c in result.checks:
        out.append(f"{c.status.upper():7s} {c.reason}")
    allowed = ", unmeasured checks allowed by --allow-unscored" if result.allow_unscored and result.unmeasured else ""
    out.append(f"verdict: {result.verdict.upper()} ({'/'.join(result.threshold_keys)} thresholds, "
               f"{result.seconds:.1f} s{allowed})")
    return "\n".join(out)
