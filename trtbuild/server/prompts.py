"""Prompts -> token ids: OpenAI chat messages through mistral-common (never a chat template), and text.

mistral-common applies Mistral's own v3 rules (system messages joined into the last user turn, tools as
[AVAILABLE_TOOLS] before the last [INST], tool calls as [TOOL_CALLS] JSON); text a user typed is encoded
as text, so a literal "[INST]" never becomes the control token. What is left here is the OpenAI ->
mistral-common mapping: roles, content parts, and tool call ids (v3 wants exactly 9 alphanumerics; OpenAI
clients send ids like "call_abc123...", so other ids are mapped to a stable 9-character digest).
"""

from __future__ import annotations

import hashlib
import json
import re

from trtbuild.errors import TrtbuildError
from trtbuild.server.errors import bad_request
from trtbuild.server.guards import check_unicode
from trtbuild.server.protocol import ChatMessage, Tool
from trtbuild.tokenizer import Tokenizer

_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def mistral_tool_call_id(openai_id: str) -> str:
    """The same OpenAI id always maps to the same v3 id, so a tool result finds its call."""
    if _MISTRAL_ID.fullmatch(openai_id):
        return openai_id
    return hashlib.sha256(openai_id.encode()).hexdigest()[:9]


def to_mistral_message(message: ChatMessage) -> dict:
    role = "system" if message.role == "developer" else message.role
    out: dict = {"role": role, "content": message.text()}
    if role == "assistant" and message.tool_calls:
        out["tool_calls"] = [{
            "id": mistral_tool_call_id(call.id), "type": "function",
            "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)},
        } for call in message.tool_calls]
    elif role == "tool":
        if not message.tool_call_id:
            raise bad_request("A tool message needs the tool_call_id of the call it answers.", param="messages")
        out["tool_call_id"] = mistral_tool_call_id(message.tool_call_id)
        if message.name:
            out["name"] = message.name
    elif out["content"] is None:
        raise bad_request(f"A {message.role} message needs content.", param="messages")
    return out


def to_mistral_tool(tool: Tool) -> dict:
    fn = tool.function
    return {"type": "function", "function": {"name": fn.name, "description": fn.description or "",
                                             "parameters": fn.parameters or {}}}


def encode_chat(tokenizer: Tokenizer, messages: list[ChatMessage], tools: list[Tool] | None = None) -> list[int]:
    """Prompt token ids of a chat request; an APIError 400 when mistral-common rejects the conversation."""
    converted = [to_mistral_message(m) for m in messages]
    mistral_tools = [to_mistral_tool(t) for t in tools] if tools else None
    _check_strings(converted, "messages")
    _check_strings(mistral_tools, "tools")
    try:
        return tokenizer.encode_chat(converted, mistral_tools)
    except TrtbuildError as exc:
        raise bad_request(str(exc), param="messages") from None


def encode_text(tokenizer: Tokenizer, text: str, bos: bool = True, param: str = "prompt") -> list[int]:
    """Plain text -> ids (a literal "[INST]" stays text); 400 for strings that are not text."""
    check_unicode(text, param)  # JSON can carry lone surrogates ("\\ud800"), which SentencePiece cannot take
    return tokenizer.encode(text, bos=bos)


def _check_strings(value, param: str) -> None:
    """Every string a chat request hands to mistral-common (contents, names, ids, tool JSON) must be text."""
    if isinstance(value, str):
        check_unicode(value, param)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, param)
            _check_strings(item, param)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, param)


def _arguments(arguments) -> str:
    if arguments is None:
        return "{}"
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
