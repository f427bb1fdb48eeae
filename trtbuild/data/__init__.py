"""The bundled corpus, and reading text samples from files.

The corpus (chat.jsonl: Mistral v3 chat exchanges; text.txt: plain paragraphs, code and several
languages) trains the embedded tiny model at creation time and is the default ("builtin") calibration
set for FP8 quantization. The same readers take a user's own .txt / .jsonl calibration file.

A sample is a dict: {"text": str} or {"messages": [{"role": ..., "content": ...}, ...]}, optionally with
"tools" (OpenAI function definitions, encoded as [AVAILABLE_TOOLS]); a final assistant message may hold
"tool_calls" instead of content (encoded as [TOOL_CALLS] JSON, the way Mistral-7B-Instruct-v0.3 calls tools).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from trtbuild.errors import TrtbuildError

CORPUS_FILES = ("chat.jsonl", "text.txt")
TOOL_CALLS_ID = 5  # the v3 control token [TOOL_CALLS]


def corpus_samples() -> list[dict]:
    """Every sample of the bundled corpus, chats first, in file order (deterministic)."""
    root = resources.files("trtbuild.data")
    return [s for name in CORPUS_FILES for s in _parse(name, root.joinpath(name).read_text(encoding="utf-8"))]


def corpus_hash() -> str:
    """sha256 over the corpus files: part of the tiny model's recipe hash and of quantization keys."""
    digest = hashlib.sha256()
    root = resources.files("trtbuild.data")
    for name in CORPUS_FILES:
        digest.update(name.encode() + b"\0" + root.joinpath(name).read_bytes())
    return digest.hexdigest()


def read_samples(path: str | Path) -> list[dict]:
    """Samples from a local file: .jsonl ({"text": ...} or {"messages": [...]} per line), or any other
    text file (one sample per paragraph; one per line when the file has no blank lines)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrtbuildError(f"cannot read calibration file {path}: {exc}; pass a UTF-8 .txt or .jsonl file") from None
    samples = _parse(path.name, text.replace("\r\n", "\n"), where=str(path))
    if not samples:
        raise TrtbuildError(f"calibration file {path} holds no text; put one sample per line or paragraph")
    return samples


def encode_sample(tokenizer, sample: dict) -> list[int]:
    """Token ids of a sample exactly as the model sees them: plain text with BOS; a chat in Mistral's v3
    format, its final assistant reply appended with EOS (as Mistral trained it)."""
    if "messages" not in sample:
        return tokenizer.encode(sample["text"], bos=True)
    messages, tools = list(sample["messages"]), sample.get("tools")
    if messages[-1].get("role") != "assistant":
        return tokenizer.encode_chat(messages, tools)
    last = messages.pop()
    prompt = tokenizer.encode_chat(messages, tools)
    if last.get("tool_calls"):  # what the model says: [TOOL_CALLS] [{"name": ..., "arguments": {...}}] </s>
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in last["tool_calls"]]
        call_ids = tokenizer.encode(json.dumps(calls, ensure_ascii=False), bos=False)
        return prompt + [TOOL_CALLS_ID] + call_ids + [tokenizer.eos_id]
    return prompt + tokenizer.encode(last["content"].rstrip(), bos=False) + [tokenizer.eos_id]


def _parse(name: str, text: str, where: str | None = None) -> list[dict]:
    where = where or name
    if name.endswith(".jsonl"):
        samples = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrtbuildError(f"{where}:{number}: not valid JSON ({exc.msg}); "
                                    'write one {"text": ...} or {"messages": [...]} object per line') from None
            if not (isinstance(sample, dict) and (isinstance(sample.get("text"), str) or
                                                  isinstance(sample.get("messages"), list))):
                raise TrtbuildError(f'{where}:{number}: expected {{"text": "..."}} or {{"messages": [...]}}')
            if "messages" not in sample:
                samples.append({"text": sample["text"]})
            else:
                tools = {"tools": sample["tools"]} if sample.get("tools") else {}
                samples.append({"messages": sample["messages"], **tools})
        return samples
    blocks = text.split("\n\n") if "\n\n" in text.strip() else text.splitlines()
    return [{"text": block.strip("\n")} for block in blocks if block.strip()]
