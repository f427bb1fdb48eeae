"""Field types for request bodies, strict where OpenAI is strict: use these for every new field.

pydantic's default (lax) mode turns `true` into 1, `"5"` into 5 and `1` into `true`; OpenAI answers 400
to all three. So: integers are JSON integers only (no booleans, strings or 2.0), numbers are integers or
decimals (no booleans or strings), booleans are true/false only, strings are strings.

Value ranges are checked once, by SamplingParams.check() (shared with the CLI and benchmarks); `ranged`
only writes them into the OpenAPI document (a test keeps the two in step).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

Int = StrictInt
Number = StrictFloat  # strict floats still take JSON integers (temperature: 1)
Bool = StrictBool
Str = StrictStr
TokenIds = list[StrictInt]


def ranged(**bounds) -> dict:
    """Field(...) keyword arguments that document a range (minimum, maximum, exclusiveMinimum, ...)."""
    return {"json_schema_extra": bounds}


__all__ = ["Annotated", "Bool", "Field", "Int", "Number", "Str", "TokenIds", "ranged"]
