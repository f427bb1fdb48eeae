"""response_format -> a guide for the engine (trtbuild.runtime.guided), or a 400 that says why not.

    {"type": "text"}                                   no constraint
    {"type": "json_object"}                            any JSON object
    {"type": "json_schema", "json_schema": {"name": "...", "schema": {...}, "strict": true}}
                                                       JSON valid against the schema
    guided_json / nvext.guided_json (vLLM's and NIM's fields): a schema, as json_schema

The schema is checked with llguidance before anything runs: a schema it cannot enforce (an unknown type,
a dangling $ref, an unsupported keyword) is a 400 naming the problem, never an unconstrained answer.
OpenAI's structured-output clients (openai's `client.beta.chat.completions.parse`, LangChain's
`with_structured_output`) send exactly these shapes.
"""

from __future__ import annotations

import json
from typing import Any

from trtbuild.runtime.guided import check_guide
from trtbuild.server.errors import bad_request

MAX_SCHEMA_BYTES = 64 * 1024  # a schema is compiled per request: bound the work a client can ask for


def response_format_guide(response_format: dict[str, Any] | None) -> dict | None:
    if response_format is None:
        return None
    kind = response_format.get("type")
    extra = set(response_format) - {"type", "json_schema"}
    if extra:
        raise bad_request(f"response_format has unknown field `{sorted(extra)[0]}`.", param="response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        guide = {"type": "json_object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}.',
                              param="response_format")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema must be a JSON schema object.",
                              param="response_format")
        if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
            raise bad_request(f"response_format.json_schema.schema is larger than {MAX_SCHEMA_BYTES} bytes.",
                              param="response_format")
        guide = {"type": "json_schema", "schema": schema}
    else:
        raise bad_request("response_format type must be one of text, json_object, json_schema.",
                          param="response_format")
    check_schema(guide, "response_format")
    return guide


def guided_json_guide(schema: dict[str, Any] | str | None, param: str) -> dict | None:
    """vLLM's `guided_json` / NIM's `nvext.guided_json`: a JSON schema (or its JSON text)."""
    if schema is None:
        return None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            schema = None
    if not isinstance(schema, dict) or len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise bad_request(f"{param} must be a JSON schema object of at most {MAX_SCHEMA_BYTES} bytes.", param=param)
    guide = {"type": "json_schema", "schema": schema}
    check_schema(guide, param)
    return guide


def check_schema(guide: dict, param: str) -> None:
    why = check_guide(guide)
    if why is not None:
        raise bad_request(f"{param}: this JSON schema cannot be enforced: {why[:300]}", param=param)
