"""Tool calling with Mistral v3's own tokens: tool_choice -> what the engine may generate, and the model's
`[TOOL_CALLS] [{"name": ..., "arguments": {...}}]` output -> OpenAI `tool_calls`.

- Tools reach the prompt through mistral-common ([AVAILABLE_TOOLS] before the last [INST], server.prompts).
- tool_choice "auto" (the default with tools): the model decides. Output that starts (after any text) with
  the [TOOL_CALLS] control token and then parses as a JSON list of {"name", "arguments"} becomes
  tool_calls with finish_reason "tool_calls"; anything else, malformed JSON included, is returned as text.
- "none": [TOOL_CALLS] is banned (logit bias -100), so the model answers in text.
- "required" or {"type": "function", "function": {"name": ...}}: the output is constrained by a grammar to
  a JSON list of calls of the offered tools (of that one tool), each with arguments valid against the
  tool's parameters schema; [TOOL_CALLS] may lead it. A named function, or parallel_tool_calls false,
  allows exactly one call.
- Each call gets a fresh id of 9 alphanumerics (the only form Mistral v3 accepts back in a later turn);
  arguments are a JSON string, as OpenAI sends them.
- Streaming: text before [TOOL_CALLS] streams as content; the calls are sent once parsed at the end, each
  as OpenAI does it (a delta with index, id, type and name, then one with the arguments), then a final
  chunk with finish_reason "tool_calls".
"""

from __future__ import annotations

import json
import secrets
import string
from typing import Sequence

from trtbuild.runtime.guided import TOOL_CALLS_ID
from trtbuild.runtime.interface import GenerationResult, TokenEvent
from trtbuild.server.errors import bad_request
from trtbuild.server.render import Renderer

_ID_ALPHABET = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


class ToolPlan:
    """What a chat request's tools and tool_choice ask of generation and of the response."""

    def __init__(self, tools, tool_choice, parallel_tool_calls: bool | None = None):
        self.tools = list(tools or [])
        self.names = [t.function.name for t in self.tools]
        choice = "auto" if tool_choice is None else tool_choice
        self.forced_name = None if isinstance(choice, str) else choice.function.name
        if not self.tools and choice not in ("auto", "none"):
            raise bad_request("tool_choice requires tools: send the functions the model may call.", param="tool_choice")
        if self.forced_name is not None and self.forced_name not in self.names:
            raise bad_request(f"tool_choice names the function `{self.forced_name}`, which is not in tools.",
                              param="tool_choice")
        self.choice = "forced" if self.forced_name is not None or choice == "required" else choice
        self.parallel = parallel_tool_calls is not False

    @property
    def active(self) -> bool:
        """Whether the response may carry tool_calls (and so the output is parsed)."""
        return bool(self.tools) and self.choice != "none"

    def logit_bias(self) -> dict[int, float]:
        return {TOOL_CALLS_ID: -100.0} if self.choice == "none" else {}

    def guide(self) -> dict | None:
        if self.choice != "forced":
            return None
        tools = [t for t in self.tools if self.forced_name in (None, t.function.name)]
        variants = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                     "properties": {"name": {"const": t.function.name},
                                    "arguments": t.function.parameters or {"type": "object"}}} for t in tools]
        schema = {"type": "array", "minItems": 1, "items": variants[0] if len(variants) == 1 else {"anyOf": variants}}
        if not self.parallel or self.forced_name is not None:  # a named function: one call of it, as vLLM
            schema["maxItems"] = 1
        return {"type": "tool_calls", "schema": schema}

    def parse(self, token_ids: Sequence[int], tokenizer) -> tuple[str | None, list[dict]] | None:
        """(content before the calls, OpenAI tool_calls) when the output is a tool call, else None."""
        ids = list(token_ids)
        if ids and ids[-1] == tokenizer.eos_id:
            ids = ids[:-1]
        if TOOL_CALLS_ID in ids:
            at = ids.index(TOOL_CALLS_ID)
            content, body = tokenizer.decode(ids[:at]).strip() or None, tokenizer.decode(ids[at + 1:])
        elif self.choice == "forced":
            content, body = None, tokenizer.decode(ids)
        else:
            return None
        calls = parse_calls(body)
        return None if calls is None else (content, calls)


def parse_calls(text: str) -> list[dict] | None:
    """Mistral's tool-call JSON -> OpenAI tool_calls, or None when it is not a valid list of calls."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]):
            return None
        arguments = item.get("arguments", {})
        if isinstance(arguments, str):
            try:
                json.loads(arguments)
            except ValueError:
                return None
        elif isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
        else:
            return None
        calls.append({"id": new_tool_call_id(), "type": "function",
                      "function": {"name": item["name"], "arguments": arguments}})
    return calls or None


class ToolRenderer(Renderer):
    """A chat Renderer that turns tool-call output into tool_calls (whole responses and SSE chunks)."""

    def __init__(self, plan: ToolPlan, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self._held: dict[int, list[int]] = {}  # choice -> token ids from [TOOL_CALLS] on (or all, when forced)

    def response(self, results: Sequence[GenerationResult], prompt_tokens: int, streams=None) -> dict:
        body = super().response(results, prompt_tokens, streams)
        for choice, result in zip(body["choices"], results):
            parsed = self.plan.parse(result.token_ids, self.texts.tokenizer)
            if parsed is not None:
                choice["message"] = {"role": "assistant", "content": parsed[0], "tool_calls": parsed[1]}
                choice["finish_reason"] = "tool_calls"
            elif self.plan.choice == "forced" or TOOL_CALLS_ID in result.token_ids:
                choice["message"]["content"] = self._as_text(result.token_ids)
        return body

    def delta_chunk(self, index: int, events: list[TokenEvent], finish_reason: str | None) -> str | None:
        held = self._held.get(index)
        if held is None and self.plan.choice == "forced":
            held = self._held[index] = []
        if held is None:
            at = next((i for i, e in enumerate(events) if e.token_id == TOOL_CALLS_ID), None)
            if at is None:
                return super().delta_chunk(index, events, finish_reason)
            held = self._held[index] = []
            before, events = events[:at], events[at:]
            out = super().delta_chunk(index, before, None) if before else None
            return (out or "") + (self.delta_chunk(index, events, finish_reason) or "") or None
        held.extend(e.token_id for e in events if e.token_id >= 0)
        if finish_reason is None:
            return None
        parsed = self.plan.parse(held, self.texts.tokenizer) if finish_reason == "stop" else None
        if parsed is None:  # not a valid call: the held output goes out as text
            return self._chunk({"index": index, "delta": {"content": self._as_text(held)}, "logprobs": None,
                                "finish_reason": finish_reason})
        chunks = []
        for k, call in enumerate(parsed[1]):
            fn = call["function"]
            chunks.append(self._tool_delta(index, {"index": k, "id": call["id"], "type": "function",
                                                   "function": {"name": fn["name"], "arguments": ""}}))
            chunks.append(self._tool_delta(index, {"index": k, "function": {"arguments": fn["arguments"]}}))
        chunks.append(self._chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}))
        return "".join(chunks)

    def _tool_delta(self, index: int, call: dict) -> str:
        return self._chunk({"index": index, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None})

    def _as_text(self, token_ids: Sequence[int]) -> str:
        return self.texts.tokenizer.decode([t for t in token_ids if t != TOOL_CALLS_ID])
