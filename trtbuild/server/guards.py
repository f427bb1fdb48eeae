"""Cheap checks before expensive work, for one generation request: the prompt's length in characters
before it is tokenized, large prompts tokenized off the event loop, and context-length errors that say
what the client actually asked.

A 1.2 MB prompt takes 0.5-1 s to tokenize; on the event loop that stalls every other client (/health
included) for as long. A token covers at most `max_piece_chars` characters of text (the longest piece
in the vocabulary, 18 for Mistral v3), so a text longer than max_input_len * max_piece_chars characters
cannot fit and is refused without tokenizing it. What can fit, if large, is tokenized in a small thread
pool: SentencePiece releases the GIL while it encodes, so the loop keeps answering.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from trtbuild.runtime.interface import EngineInfo
from trtbuild.server.errors import APIError, bad_request
from trtbuild.tokenizer import Tokenizer

T = TypeVar("T")
OFFLOAD_CHARS = 4096  # below this a prompt tokenizes in well under a millisecond: a thread hop would cost more
_pool: ThreadPoolExecutor | None = None


@functools.lru_cache(maxsize=8)
def max_piece_chars(tokenizer: Tokenizer) -> int:
    """The most characters of text one token can stand for (byte pieces like <0x0A> overcount: still a bound)."""
    return max(len(tokenizer.id_to_piece(i)) for i in range(tokenizer.vocab_size))


async def off_loop(chars: int, fn: Callable[..., T], *args) -> T:
    """fn(*args) inline for small inputs, in the tokenizer pool for large ones (2 threads: tokenizing must
    not take every core from the engine)."""
    global _pool
    if chars < OFFLOAD_CHARS:
        return fn(*args)
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="trtbuild-tokenize")
    return await asyncio.get_running_loop().run_in_executor(_pool, fn, *args)


def where(chat: bool) -> str:
    return "messages" if chat else "prompt"


def check_chars(chars: int, tokenizer: Tokenizer, info: EngineInfo, chat: bool) -> None:
    """400 context_length_exceeded for a text that cannot fit whatever its tokens, before tokenizing it."""
    limit = min(info.max_input_len, info.max_seq_len - 1)
    per_token = max_piece_chars(tokenizer)
    if chars > limit * per_token:
        raise bad_request(
            f"This model's maximum context length is {info.max_seq_len} tokens (prompts up to {limit}). However, "
            f"your {where(chat)} has {chars} characters, more than {limit} tokens can hold (one token stands for "
            f"at most {per_token} characters). Please reduce the length of the {where(chat)}.",
            param=where(chat), code="context_length_exceeded")


def check_context(prompt_tokens: int, max_tokens: int | None, info: EngineInfo, chat: bool) -> None:
    """400 context_length_exceeded when the prompt, or prompt + max_tokens, does not fit the engine."""
    limit = min(info.max_input_len, info.max_seq_len - 1)
    head = f"This model's maximum context length is {info.max_seq_len} tokens (prompts up to {limit}). However, "
    fix = f"Please reduce the length of the {where(chat)}"
    if prompt_tokens > limit:
        if max_tokens is None:  # nothing was asked of the completion: do not invent a number for it
            raise _context(f"{head}your {where(chat)} resulted in {prompt_tokens} tokens. {fix}.", chat)
        raise _context(f"{head}you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                       f"{where(chat)}, {max_tokens} in the completion). {fix}.", chat)
    if max_tokens is not None and prompt_tokens + max_tokens > info.max_seq_len:
        raise _context(f"{head}you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                       f"{where(chat)}, {max_tokens} in the completion). {fix} or completion.", chat)


def _context(message: str, chat: bool) -> APIError:
    return bad_request(message, param=where(chat), code="context_length_exceeded")


def check_unicode(text: str | None, param: str) -> None:
    """400 for a string JSON can carry but no tokenizer can take: a lone surrogate ("\\ud800")."""
    if not text:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{param} is not valid Unicode text (it holds a lone surrogate).", param=param) from None
