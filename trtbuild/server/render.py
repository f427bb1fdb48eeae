"""Response bodies and SSE chunks in OpenAI's exact shapes.

Streaming chunks are the hot path (one per request per engine step at most): each is one json.dumps of
a small dict between a prefix and suffix built once per request, not a pydantic model.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Sequence

from trtbuild.runtime.interface import GenerationResult, RequestStream, TokenEvent
from trtbuild.server.logprobs import chat_logprobs, completion_logprobs, listed
from trtbuild.tokenizer import Tokenizer

DONE = "data: [DONE]\n\n"
_ids = random.Random()  # its own generator, seeded from os.urandom: nobody's random.seed() repeats ids
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)  # nor does a forked worker


def random_hex() -> str:
    """128 random bits in 32 hex digits, as uuid4().hex shows them, at a seventh of its cost."""
    return f"{_ids.getrandbits(128):032x}"


_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_string = json.encoder.encode_basestring  # what _compact does for a str, without its Python-level dispatch


def new_id(prefix: str) -> str:
    return f"{prefix}-{random_hex()}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict) -> str:
    return f"data: {_compact(data)}\n\n"


class TokenTexts:
    """Token id -> (text, utf-8 bytes) for logprobs, the way OpenAI shows tokens (" Hello", not "▁Hello")."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            piece = self.tokenizer.id_to_piece(token_id)
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # byte fallback
                byte = int(piece[3:5], 16)
                # a lone byte of a multi-byte character is not text: show it as vLLM does
                text = chr(byte) if byte < 0x80 else f"bytes:\\x{byte:02x}"
                hit = (text, [byte])
            else:
                text = piece.replace("\u2581", " ")
                hit = (text, list(text.encode("utf-8")))
            self._cache[token_id] = hit
        return hit

    # --- chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]} -----------------------
    def chat_logprobs(self, token_ids: Sequence[int], logprobs: Sequence[float] | None,
                      tops: Sequence[list] | None) -> dict:
        content = []
        for i, token_id in enumerate(token_ids):
            text, raw = self(token_id)
            top = []
            for alt_id, alt_lp in (tops[i] if tops else ()):
                alt_text, alt_raw = self(alt_id)
                top.append({"token": alt_text, "logprob": _finite(alt_lp), "bytes": alt_raw})
            content.append({"token": text, "logprob": _finite(logprobs[i]) if logprobs else None, "bytes": raw,
                            "top_logprobs": top})
        return {"content": content, "refusal": None}

    # --- completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"} -----------------------
    def pieces_with_offsets(self, token_ids: Sequence[int], offset: int = 0) -> tuple[list[str], list[int], int]:
        """Each token's text, the text offset where it starts, and the offset after the last one."""
        tokens, offsets = [], []
        for token_id in token_ids:
            text = self(token_id)[0]
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
        return tokens, offsets, offset

    def completion_logprobs(self, token_ids: Sequence[int], logprobs: Sequence[float] | None,
                            tops: Sequence[list] | None, offset: int = 0) -> dict:
        tokens, offsets, _ = self.pieces_with_offsets(token_ids, offset)
        return {"tokens": tokens, "token_logprobs": [_finite(lp) for lp in (logprobs or [])],
                "top_logprobs": [{self(t)[0]: _finite(lp) for t, lp in top} for top in tops] if tops else None,
                "text_offset": offsets}


def _finite(value: float) -> float:
    # JSON has no -Infinity: a token the model rules out entirely is reported at the float32 floor.
    return value if value > -3.4e38 else -3.4e38


class Renderer:
    """Builds one request's bodies (chat or text completion); knows its id, model and options."""

    def __init__(self, chat: bool, model: str, texts: TokenTexts, logprobs: bool, include_usage: bool,
                 continuous_usage: bool = False, prompt_tokens: int = 0):
        self.chat, self.model, self.texts, self.logprobs = chat, model, texts, logprobs
        # vLLM's stream_options.continuous_usage_stats: every chunk carries the usage so far (completion
        # tokens of that choice), so a client knows how many tokens each chunk delivered
        self.continuous = continuous_usage
        self.prompt_tokens = prompt_tokens
        self._completion: dict[int, int] = {}
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        self._head = (f'data: {{"id":"{self.id}","object":"{kind}","created":{self.created},'
                      f'"model":{_compact(model)},"choices":[')
        # OpenAI: with include_usage, every chunk carries "usage": null until the final usage chunk
        self._tail = '],"usage":null}\n\n' if include_usage else "]}\n\n"
        # the common chunk (text only) as a template: the hot path of a busy server
        self._text_open = '{"index":%d,"delta":{"content":' if chat else '{"index":%d,"text":'
        self._text_close = ('},' if chat else ',') + '"logprobs":null,"finish_reason":null}' + self._tail
        if continuous_usage:  # the usage follows: '],"usage":{..."completion_tokens":N,"total_tokens":M}}'
            self._text_close = (self._text_close[:-len(self._tail)] +
                                f'],"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":')
        self._text_heads: dict[int, str] = {}  # choice index -> everything before its text
        self._text_offsets: dict[int, int] = {}

    # --- streaming -----------------------------------------------------------------------------------
    def role_chunk(self, index: int) -> str:
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}, index)

    def delta_chunk(self, index: int, events: list[TokenEvent], finish_reason: str | None) -> str | None:
        """The chunk for every event of one choice that arrived at once; None when it carries nothing."""
        if len(events) == 1:  # the common case: one token since the last chunk
            text, tokens = events[0].text, int(events[0].token_id >= 0)
        else:
            text, tokens = "".join(e.text for e in events), sum(1 for e in events if e.token_id >= 0)
        if self.continuous:
            done = self._completion[index] = self._completion.get(index, 0) + tokens
        if finish_reason is None and not self.logprobs:
            if not text:
                return None
            head = self._text_heads.get(index)
            if head is None:
                head = self._text_heads[index] = self._head + self._text_open % index
            if self.continuous:  # one f-string: a 2 us chunk became ~1 us (one per token per stream)
                total = self.prompt_tokens + done
                return f'{head}{_string(text)}{self._text_close}{done},"total_tokens":{total}}}}}\n\n'
            return f"{head}{_string(text)}{self._text_close}"
        logprobs = None
        if self.logprobs:
            entries = listed(events, self.texts.tokenizer.control_ids)
            if entries:
                logprobs = self._logprobs(entries, index, text)
        if not text and logprobs is None and finish_reason is None:
            return None
        if self.chat:
            choice = {"index": index, "delta": {"content": text} if text or finish_reason is None else {},
                      "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return self._chunk(choice, index)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return sse({"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [],
                    "usage": usage(prompt_tokens, completion_tokens)})

    def _chunk(self, choice: dict, index: int = 0) -> str:
        return self._head + _compact(choice) + (self._usage_tail(index) if self.continuous else self._tail)

    def _usage_tail(self, index: int) -> str:
        done = self._completion.get(index, 0)
        return (f'],"usage":{{"prompt_tokens":{self.prompt_tokens},"completion_tokens":{done},'
                f'"total_tokens":{self.prompt_tokens + done}}}}}\n\n')

    def _logprobs(self, entries: list[TokenEvent], index: int, text: str) -> dict:
        if self.chat:
            return chat_logprobs(entries, self.texts)
        offset = self._text_offsets.get(index, 0)
        self._text_offsets[index] = offset + len(text)
        return completion_logprobs(entries, self.texts, offset)

    # --- whole responses -----------------------------------------------------------------------------
    def response(self, results: Sequence[GenerationResult], prompt_tokens: int,
                 streams: Sequence[RequestStream] | None = None) -> dict:
        choices = []
        for index, r in enumerate(results):
            logprobs = None
            if self.logprobs and streams is not None:  # token strings = the text each token released
                entries = listed(streams[index].events, self.texts.tokenizer.control_ids)
                logprobs = chat_logprobs(entries, self.texts) if self.chat else completion_logprobs(entries, self.texts)
            elif self.logprobs:
                args = (r.token_ids, r.logprobs, r.top_logprobs)
                logprobs = self.texts.chat_logprobs(*args) if self.chat else self.texts.completion_logprobs(*args)
            if self.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": r.text},
                                "logprobs": logprobs, "finish_reason": r.finish_reason})
            else:
                choices.append({"index": index, "text": r.text, "logprobs": logprobs,
                                "finish_reason": r.finish_reason})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices,
                "usage": usage(prompt_tokens, sum(len(r.token_ids) for r in results))}
