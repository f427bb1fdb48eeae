"""`trtbuild validate`: the accuracy gate, on the command line."""

from __future__ import annotations

import click

from trtbuild.commands import progress_bars

THRESHOLD_OPTIONS = [  # (option, Thresholds field, help)
    ("--min-exact-match", "min_exact_match", "Minimum fraction of prompts generated exactly like the reference."),
    ("--min-token-agreement", "min_token_agreement", "Minimum fraction of the reference's tokens reproduced in place."),
    ("--min-top1", "min_top1", "Minimum teacher-forced top-1 agreement."),
    ("--max-mean-kl", "max_mean_kl", "Maximum mean KL(reference || engine), nats per token."),
    ("--max-kl", "max_kl", "Maximum KL(reference || engine) at any position."),
    ("--max-logprob-diff", "max_mean_logprob_diff", "Maximum mean |logprob difference| of the reference's token."),
    ("--min-rouge-l", "min_rouge_l", "Minimum mean ROUGE-L F1 of the engine's text against the reference's."),
    ("--max-rouge1-drop", "max_rouge1_drop", "Summarization: maximum ROUGE-1 points below the reference."),
]


def threshold_options(command):
    for option, field, help_ in reversed(THRESHOLD_OPTIONS):
        command = click.option(option, field, type=click.FloatRange(min=0), default=None, help=help_)(command)
    return command


@click.command("validate")
@click.argument("engine")
@click.option("--reference", metavar="MODEL", envvar="TRTBUILD_REFERENCE",
              help="Reference checkpoint (directory, hub id or builtin:tiny-mistral) [default: the engine's source "
                   "model from its manifest; env TRTBUILD_REFERENCE].")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help='JSONL prompts, one {"messages": [...]} or {"prompt": "..."} per line (optional "max_tokens") '
                   "[default: the bundled set].")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, envvar="TRTBUILD_VALIDATE_MAX_TOKENS",
              help="Tokens generated per prompt, greedy [default: 64].")
@click.option("--summarize", metavar="DATASET|FILE", default=None,
              help='Also run a summarization check: a JSONL file of {"article", "highlights"} or a datasets name '
                   "such as cnn_dailymail (needs the hub and `pip install datasets`).")
@click.option("--summarize-samples", type=click.IntRange(min=1), default=20, show_default=True,
              help="Articles used by --summarize.")
@click.option("--profile", metavar="NAME|FILE", envvar="TRTBUILD_PROFILE", default=None,
              help="Profile (name or TOML file) whose [validation.<precision>] tables set the thresholds "
                   "[env TRTBUILD_PROFILE; default: the builtin defaults].")
@threshold_options
@click.option("--allow-unscored", is_flag=True,
              help="Accept an engine whose teacher-forced metrics (top-1, KL, logprob diff) cannot be computed, "
                   "e.g. a TensorRT-LLM engine built without gather_context_logits, on the remaining checks. "
                   "Without it such an engine is NOT VALIDATED (exit 5).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def validate_cmd(ws, engine, reference, prompts_file, max_tokens, summarize, summarize_samples, profile,
                 allow_unscored, as_json, **thresholds):
    """Compare ENGINE with the transformers reference on the same prompts and gate it.

    \b
    ENGINE is an engine directory, or a variant (fp16, fp8, fp8-kv8) or key prefix in the workspace.
    Both run greedy on the same token ids; the result goes to ENGINE/validation.json and is referenced
    from its manifest. Exit code 3 when a threshold fails (one reason per failure), 5 when a gated metric
    could not be computed (NOT VALIDATED; see --allow-unscored), 0 when it passes.
    Metrics and default thresholds per precision: docs/validation.md.

    \b
      trtbuild validate fp8
      trtbuild validate fp8 --min-top1 0.95 --max-mean-kl 0.02 --json
      trtbuild validate fp16 --prompts my_prompts.jsonl --max-tokens 128
    """
    from trtbuild.cli import emit
    from trtbuild.validation import format_table, validate_engine
    from trtbuild.validation.result import RESULT_FILE

    table = None
    if profile:
        from trtbuild.config import load_profile

        table = load_profile(profile).validation
    overrides = {k: v for k, v in thresholds.items() if v is not None}
    result = validate_engine(ws, engine, reference=reference, prompts=prompts_file, max_tokens=max_tokens,
                             thresholds=overrides, profile_thresholds=table, progress=progress_bars(as_json),
                             summarize=summarize, summarize_samples=summarize_samples, allow_unscored=allow_unscored)
    emit(result.to_dict(), format_table(result), as_json, path=f"{result.engine_dir}/{RESULT_FILE}")
    result.raise_if_failed()

