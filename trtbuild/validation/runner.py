"""validate_engine: run an engine and the transformers reference on the same prompts, then gate.

    result = validate_engine(ws, "fp8")          # writes <engine>/validation.json, updates the manifest
    result.raise_if_failed()                     # ValidationFailed (exit 3) with one reason per failure

The engine gets all prompts at once (it batches them); the reference runs them one by one (FP32 on CPU,
BF16 on a GPU). Both are greedy and use the same token ids (mistral-common v3 chat encoding). The loaded
reference and its outputs are cached per checkpoint, so validating fp16, fp8 and fp8-kv8 of one model
loads and runs the reference once.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from trtbuild.errors import TrtbuildError
from trtbuild.manifest import Manifest, canonical_hash, library_versions, load_manifest
from trtbuild.runtime.interface import ContextLengthExceeded, Engine, GenerationResult, SamplingParams
from trtbuild.validation.gate import precision_keys, resolve_thresholds, run_checks, split_threshold_arg, verdict
from trtbuild.validation.metrics import (divergence_margin, first_divergence, matching_tokens, rouge1, rouge_l,
                                         teacher_forced)
from trtbuild.validation.prompts import Prompt, load_articles, load_prompts, prompt_hash, summary_prompts
from trtbuild.validation.result import RESULT_FILE, PromptResult, ValidationResult, aggregate
from trtbuild.workspace import Workspace, atomic_write_json

DEFAULT_MAX_TOKENS = 64
SUMMARY_MAX_TOKENS = 96
DEFAULT_SUMMARY_SAMPLES = 20


class Reference:
    """One loaded reference model and the outputs it already produced (keyed by prompt ids)."""

    def __init__(self, path: Path, identity: dict, device: str | None = None):
        from trtbuild.runtime import load_reference

        started = time.perf_counter()
        self.engine: Engine = load_reference(path, device=device)
        self.load_seconds = time.perf_counter() - started
        self.identity = {**identity, "path": str(path), "backend": self.engine.info.backend,
                         "dtype": self.engine.info.precision.get("weights"),
                         "device": str(getattr(self.engine, "device", "cpu"))}
        self._outputs: dict[tuple, GenerationResult] = {}
        self._scores: dict[tuple, object] = {}

    def generate(self, prompt_ids: list[int], max_tokens: int) -> GenerationResult:
        key = (tuple(prompt_ids), max_tokens)
        if key not in self._outputs:
            out = self.engine.submit(prompt_ids, greedy(max_tokens)).result()
            if out.finish_reason == "error":
                raise TrtbuildError(f"the reference model failed: {out.error}")
            self._outputs[key] = out
        return self._outputs[key]

    def score(self, prompt_ids: list[int], continuation: list[int]):
        key = (tuple(prompt_ids), tuple(continuation))
        if key not in self._scores:
            self._scores[key] = self.engine.score(prompt_ids, continuation)
        return self._scores[key]


_REFERENCES: dict[str, Reference] = {}


def close_references() -> None:
    """Free every cached reference model (on a GPU: call it before benchmarking, the 7B holds 15 GB)."""
    while _REFERENCES:
        _REFERENCES.popitem()[1].engine.close()
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reference_for(ws: Workspace, manifest: Manifest, reference: str | Path | None, progress: bool) -> Reference:
    """The engine's own source checkpoint (or `reference`), loaded once per checkpoint.

    The manifest's recorded path is used while it exists (builtin and hub paths are content-addressed);
    otherwise the source is resolved again by id and revision (re-created or re-downloaded) and must
    have the file hashes the engine was built from."""
    source = manifest.source or {}
    recorded = source.get("path")
    if not reference and recorded and Path(recorded).is_dir():
        path, model_id, revision, files = Path(recorded), source.get("model_id"), source.get("revision"), \
            source.get("files") or {}
    else:
        from trtbuild.models import resolve_source

        model_id = str(reference) if reference else source.get("model_id")
        if not model_id:
            raise TrtbuildError(f"engine {manifest.variant}-{manifest.key[:16]} does not name its source model; "
                                "pass --reference MODEL")
        revision = None if reference else source.get("revision")
        resolved = resolve_source(ws, model_id, revision, progress=progress)
        path, files = Path(resolved.path), resolved.files or {}
        built_from = source.get("files") or {}
        if not reference and built_from and files and files != built_from:
            raise TrtbuildError(f"{path} differs from the checkpoint engine {manifest.variant}-{manifest.key[:16]} "
                                "was built from (file hashes); pass --reference MODEL")
    key = str(path.resolve())
    if key not in _REFERENCES:
        identity = {"model_id": model_id, "revision": revision, "files_sha256": canonical_hash(files)}
        _REFERENCES[key] = Reference(Path(key), identity)
    return _REFERENCES[key]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def fit_prompts(prompts: Sequence[Prompt], engine: Engine, max_tokens: int, notes: list[str]) -> list[tuple]:
    """(prompt, ids, max_tokens) for each prompt the engine accepts; the others are noted and skipped."""
    info, fitted = engine.info, []
    for prompt in prompts:
        ids = prompt.encode(engine.tokenizer)
        if len(ids) > info.max_input_len or len(ids) >= info.max_seq_len:
            notes.append(f"skipped prompt {prompt.name} ({prompt.origin}): {len(ids)} tokens do not fit the "
                         f"engine's max_input_len {info.max_input_len}")
            continue
        fitted.append((prompt, ids, min(prompt.max_tokens or max_tokens, info.max_seq_len - len(ids))))
    return fitted


def run_engine(engine: Engine, work: list[tuple], progress: bool, what: str) -> list[GenerationResult]:
    streams = [engine.submit(ids, greedy(mt)) for _, ids, mt in work]  # all at once: the engine batches
    return [s.result() for s in tqdm(streams, desc=f"{what}: engine", disable=not progress, leave=False)]


def run_reference(ref: Reference, work: list[tuple], progress: bool, what: str) -> list[GenerationResult]:
    return [ref.generate(ids, mt) for _, ids, mt in tqdm(work, desc=f"{what}: reference", disable=not progress,
                                                          leave=False)]


def compare(prompt: Prompt, ids: list[int], max_tokens: int, ref_out: GenerationResult,
            eng_out: GenerationResult, kind: str | None = None) -> PromptResult:
    ref_tokens, eng_tokens = ref_out.token_ids, eng_out.token_ids
    result = PromptResult(
        name=prompt.name, kind=kind or prompt.kind, lang=prompt.lang, prompt_tokens=len(ids),
        prompt_sha256=prompt_hash(ids), max_tokens=max_tokens, reference_token_ids=list(ref_tokens),
        engine_token_ids=list(eng_tokens), reference_text=ref_out.text, engine_text=eng_out.text,
        exact_match=list(ref_tokens) == list(eng_tokens), first_divergence=first_divergence(eng_tokens, ref_tokens),
        matching_tokens=matching_tokens(eng_tokens, ref_tokens),
        token_agreement=matching_tokens(eng_tokens, ref_tokens) / max(len(ref_tokens), 1),
        rouge_l=rouge_l(eng_out.text, ref_out.text))
    if prompt.references:
        result.summary_references = list(prompt.references)
        result.rouge1_engine = max(rouge1(eng_out.text, r) for r in prompt.references)
        result.rouge1_reference = max(rouge1(ref_out.text, r) for r in prompt.references)
    return result


def validate_engine(ws: Workspace, engine_dir: str | Path, reference: str | Path | None = None,
                    prompts: str | Path | Sequence[Prompt] | None = None, max_tokens: int | None = None,
                    thresholds=None, progress: bool = True, *, profile_thresholds: dict | None = None,
                    summarize: str | None = None, summarize_samples: int = DEFAULT_SUMMARY_SAMPLES,
                    allow_unscored: bool = False) -> ValidationResult:
    """Validate one engine against the reference; write <engine>/validation.json and point the manifest
    at it. Returns the result whatever the verdict (call result.raise_if_failed() to gate).

    thresholds: None (defaults for the engine's precision), a Thresholds, a profile's validation table
    ({"fp8": {"min_top1": 0.9}}), or flat overrides ({"min_top1": 0.9}); profile_thresholds: a profile's
    validation table applied under flat overrides. summarize: a JSONL file of {"article", "highlights"} or a
    `datasets` name for the ROUGE-1 check. allow_unscored: a threshold whose metric could not be measured
    does not make the engine "not validated" (the user's explicit opt-out, --allow-unscored).
    """
    from trtbuild.runtime import load_engine

    started_at, started = Manifest.now(), time.perf_counter()
    engine_dir = ws.resolve_engine(engine_dir)
    manifest = load_manifest(engine_dir)
    profile_table, overrides, fixed = split_threshold_arg(thresholds)
    limits = fixed or resolve_thresholds(manifest.build, profile_thresholds or profile_table, overrides)
    if prompts is None or isinstance(prompts, (str, Path)):
        prompt_set, prompt_list = load_prompts(prompts)
    else:
        prompt_set, prompt_list = "given", list(prompts)
    max_tokens = max_tokens or DEFAULT_MAX_TOKENS
    timings: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings[stage] = round(now - since, 3)
        return now

    articles_from, articles = load_articles(summarize, summarize_samples) if summarize else (None, [])
    ref = reference_for(ws, manifest, reference, progress)
    timings["reference_load"] = round(ref.load_seconds, 3)
    clock = time.perf_counter()
    notes: list[str] = []
    with load_engine(engine_dir) as engine:
        clock = lap("engine_load", clock)
        work = fit_prompts(prompt_list, engine, max_tokens, notes)
        if not work:
            raise TrtbuildError(f"no validation prompt fits engine {engine_dir.name}; " + notes[0])
        summary_work = fit_prompts(summary_prompts(articles, engine.tokenizer, engine.info.max_input_len,
                                                   SUMMARY_MAX_TOKENS), engine, SUMMARY_MAX_TOKENS, notes)
        eng_outs = run_engine(engine, work + summary_work, progress, engine_dir.name)
        clock = lap("engine_generate", clock)
        ref_outs = run_reference(ref, work + summary_work, progress, engine_dir.name)
        clock = lap("reference_generate", clock)
        results = [compare(p, ids, mt, r, e) for (p, ids, mt), r, e in zip(work, ref_outs, eng_outs)]
        summaries = [compare(p, ids, mt, r, e, kind="summary") for (p, ids, mt), r, e
                     in zip(summary_work, ref_outs[len(work):], eng_outs[len(work):])]
        notes += [f"the engine failed on prompt {p.name}: {e.error}" for (p, _, _), e in zip(work + summary_work, eng_outs)
                  if e.finish_reason == "error"]
        can_score = score_all(engine, ref, work, results, notes, progress)
        lap("score", clock)

    metrics = aggregate(results, summaries)
    metrics.engine_errors = sum(e.finish_reason == "error" for e in eng_outs)
    checks = run_checks(dataclasses.asdict(metrics), limits,
                        not_requested=frozenset() if summarize else frozenset({"rouge1_drop"}))
    result = ValidationResult(
        engine=engine_dir.name, engine_dir=str(engine_dir), engine_key=manifest.key, variant=manifest.variant,
        backend=manifest.backend, precision=dict(manifest.precision), threshold_keys=precision_keys(manifest.build),
        reference=ref.identity, prompt_set=prompt_set, summary_set=articles_from, max_tokens=max_tokens,
        metrics=metrics, thresholds=limits, checks=checks,
        available={"greedy": True, "rouge_l": True, "teacher_forced": can_score, "summarization": bool(summaries)},
        notes=notes, prompts=results, summaries=summaries, versions=library_versions(), started_at=started_at,
        seconds=round(time.perf_counter() - started, 3), timings=timings,
        allow_unscored=allow_unscored, passed=verdict(checks, allow_unscored) == "pass")
    save_result(engine_dir, result)
    return result


def score_all(engine: Engine, ref: Reference, work: list[tuple], results: list[PromptResult], notes: list[str],
              progress: bool) -> bool:
    """Teacher-forced metrics for every prompt; False (and a note) when the engine cannot score."""
    if not engine.info.can_score:
        try:  # the backend says why in its NotImplementedError
            engine.score(work[0][1], [])
            why = "it does not report scores"
        except NotImplementedError as exc:
            why = str(exc)
        notes.append(f"teacher-forced metrics unavailable: {why}")
        return False
    for (_, ids, _), result in tqdm(list(zip(work, results)), desc="teacher-forced scoring", disable=not progress,
                                    leave=False):
        tokens = result.reference_token_ids
        try:
            engine_scores = engine.score(ids, tokens)
        except (NotImplementedError, ContextLengthExceeded) as exc:  # e.g. prompt + continuation > max_input_len
            notes.append(f"teacher-forced metrics unavailable: {exc}")
            for r in results:
                r.teacher_forced = None
            return False
        reference_scores = ref.score(ids, tokens)
        result.teacher_forced = teacher_forced(reference_scores, engine_scores, tokens)
        result.divergence_margin = divergence_margin(reference_scores, tokens, result.engine_token_ids,
                                                     result.first_divergence)
    return True


def save_result(engine_dir: Path, result: ValidationResult) -> Path:
    """validation.json next to the engine, then the manifest's pointer to it (both written atomically)."""
    path = atomic_write_json(engine_dir / RESULT_FILE, result.to_dict())
    manifest = load_manifest(engine_dir)  # re-read: a benchmark may have added its own result meanwhile
    manifest.results["validation"] = RESULT_FILE
    manifest.save(engine_dir)
    return path
