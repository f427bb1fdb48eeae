"""Logprobs whose token strings are the response's text: concatenated, they give exactly the `text`
(completions) or `content` (chat) returned, and text_offset always points into it.

A token's piece is not its text: SentencePiece drops a leading space after a control token, a character
split over byte-fallback tokens only exists once its last byte arrives, a stop string's prefix is held
back until it is known not to be one, and a stop string itself is cut from the text. So each generated
token is listed with the text it released (RequestStream's TokenEvent.text): usually its piece, "" for
a byte or a held-back prefix, more than its piece when it releases held text. Control tokens (EOS,
"[INST]"...) are text to no one: they are listed only when they released text. The same rule, applied
event by event, gives the same tokens streamed and not streamed.

Alternatives (top_logprobs) are shown as their own pieces (" Hello", not "▁Hello"), except the chosen
token, shown as in the list.
"""

from __future__ import annotations

from typing import Callable, Sequence

from trtbuild.runtime.interface import TokenEvent

Piece = Callable[[int], tuple[str, list[int]]]  # render.TokenTexts: id -> (text, utf-8 bytes)


def listed(events: Sequence[TokenEvent], control_ids: frozenset[int]) -> list[TokenEvent]:
    """The events that get a logprobs entry: generated tokens, except control tokens that released nothing.
    (An event without a token (-1) ends an aborted or failed request: it has no logprob.)"""
    return [e for e in events if e.token_id >= 0 and (e.text or e.token_id not in control_ids)]


def _finite(value: float | None) -> float | None:
    # JSON has no -Infinity: a token the model rules out entirely is reported at the float32 floor.
    return None if value is None else max(value, -3.4e38)


def chat_logprobs(entries: Sequence[TokenEvent], piece: Piece) -> dict:
    """{"content": [{"token", "logprob", "bytes", "top_logprobs"}], "refusal": None} for listed() events."""
    content = []
    for e in entries:
        top = [{"token": e.text if alt == e.token_id else piece(alt)[0], "logprob": _finite(lp),
                "bytes": list(e.text.encode()) if alt == e.token_id else piece(alt)[1]}
               for alt, lp in (e.top_logprobs or ())]
        content.append({"token": e.text, "logprob": _finite(e.logprob), "bytes": list(e.text.encode()),
                        "top_logprobs": top})
    return {"content": content, "refusal": None}


def completion_logprobs(entries: Sequence[TokenEvent], piece: Piece, offset: int = 0) -> dict:
    """{"tokens", "token_logprobs", "top_logprobs", "text_offset"} for listed() events. `offset` is where
    their text starts in the choice's text (streaming: the length of what was sent before)."""
    tokens, logprobs, tops, offsets = [], [], [], []
    for e in entries:
        tokens.append(e.text)
        logprobs.append(_finite(e.logprob))
        offsets.append(offset)
        offset += len(e.text)
        tops.append({(e.text if alt == e.token_id else piece(alt)[0]): _finite(lp)
                     for alt, lp in (e.top_logprobs or ())})
    has_top = any(e.top_logprobs is not None for e in entries)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops if has_top else None,
            "text_offset": offsets}
