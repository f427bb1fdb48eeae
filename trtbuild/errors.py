"""One exception type for everything a user can get wrong.

The CLI prints `error: <message>` and exits non-zero for a TrtbuildError; anything else is a bug and
keeps its traceback. Messages are one line: what is wrong, then what to do.
"""


class TrtbuildError(Exception):
    """A failure the user can act on; str(exc) is the one-line message shown to them."""

    exit_code = 1


class ValidationFailed(TrtbuildError):
    """An engine failed its accuracy gate."""

    exit_code = 3


class EngineNotValidated(ValidationFailed):
    """A metric the gate depends on could not be computed (e.g. a TensorRT-LLM engine that cannot be
    scored): the engine is neither passed nor failed, and is not used unless the user allows it."""

    exit_code = 5


class RegressionDetected(TrtbuildError):
    """A benchmark run regressed against its baseline beyond the tolerance."""

    exit_code = 4


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for a message or a log line, saying how much was left out: errors
    quote what a client or a config file sent, and that can be megabytes. Non-strings are repr()'d."""
    if not isinstance(text, str):
        text = repr(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
