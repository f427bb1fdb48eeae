"""Validation: every engine compared with the transformers reference on the same prompts, then gated.

    from trtbuild.validation import validate_engine, load_validation
    result = validate_engine(ws, engine_dir)     # -> ValidationResult, also <engine>/validation.json
    result.raise_if_failed()                     # ValidationFailed (exit code 3) when a threshold fails

metrics.py defines the metrics, prompts.py the prompt sets, gate.py the thresholds and checks,
result.py the result and its table, runner.py the run itself. docs/validation.md is the user's guide.
"""

from trtbuild.validation.gate import DEFAULT_THRESHOLDS, Thresholds, resolve_thresholds
from trtbuild.validation.result import ValidationResult, format_table, load_validation
from trtbuild.validation.runner import close_references, validate_engine

__all__ = ["DEFAULT_THRESHOLDS", "Thresholds", "ValidationResult", "close_references", "format_table",
           "load_validation", "resolve_thresholds", "validate_engine"]
