"""Incremental detokenization and stop strings, written once for every backend and the server.

One token is not one string: SentencePiece drops the leading space of the first piece it decodes, and
byte-fallback pieces (<0xF0> <0x9F> ...) only become a character once the whole UTF-8 sequence is there.
So, like vLLM, TGI and trtllm-serve, we keep two offsets into the token list and emit only the text
that decoding a longer window adds, never a trailing U+FFFD (a partial character).

Most tokens are plain pieces whose text does not depend on their neighbours: for those (after a
completed character) the delta is the piece's own text from Tokenizer.piece_texts, without decoding.
tests/test_detok.py checks the shortcut against full decoding.

Stop strings can span tokens: after each delta we search only the new tail, cut at the match, and hold
back the last len(longest stop) - 1 characters so a stop string's prefix never reaches the caller.
"""

from __future__ import annotations

from typing import Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer, context_ids: Sequence[int] = (), stop: Sequence[str] = (),
                 include_stop: bool = False, min_tokens: int = 0):
        self.tokenizer = tokenizer
        self.tokens: list[int] = list(context_ids)  # context first: it fixes the first token's spacing
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.stops = [s for s in stop if s]
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.include_stop = include_stop
        self.min_tokens = min_tokens
        self.generated = 0
        self.text = ""  # all text decoded so far (cut at a stop string once one matched)
        self.emitted = 0  # how much of self.text the caller has been given
        self.stopped: str | None = None
        self.pieces = getattr(tokenizer, "piece_texts", None)  # the shortcut, where the tokenizer has it

    def push(self, token_id: int) -> str:
        """Add one token; return the text the caller may be shown now."""
        if self.stopped is not None:
            return ""
        tokens = self.tokens
        tokens.append(int(token_id))
        self.generated += 1
        pieces = self.pieces
        # the common case, inline (once per token of every stream): a plain piece after a completed
        # character, no stop strings to search or hold back for
        if (pieces is not None and not self.stops and self.read_offset == len(tokens) - 1
                and self.emitted == len(self.text) and 0 <= token_id < len(pieces) and pieces[token_id]):
            delta = pieces[token_id]
            if self.prefix_offset == self.read_offset and delta[0] == " ":  # decoding drops a leading space
                delta = delta[1:]
            self.prefix_offset, self.read_offset = self.read_offset, len(tokens)
            self.text += delta
            self.emitted = len(self.text)
            return delta
        delta = self._decode_delta()
        if not delta:
            return ""
        self.text += delta
        if self.stops and self.generated >= self.min_tokens and self._match_stop(len(delta)):
            return self._release(len(self.text))
        return self._release(len(self.text) - self.holdback)

    def flush(self) -> str:
        """The request ended: release whatever was held back (never a partial character)."""
        if self.stopped is None:
            self.text = self.text.rstrip(REPLACEMENT)
        return self._release(len(self.text))

    def _decode_delta(self) -> str:
        if self.read_offset == len(self.tokens) - 1 and self.pieces is not None:  # nothing pending before it
            token = self.tokens[-1]
            text = self.pieces[token] if 0 <= token < len(self.pieces) else None
            if text:
                if self.prefix_offset == self.read_offset and text[0] == " ":  # decoding drops a leading space
                    text = text[1:]
                self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
                return text
        decode = self.tokenizer.decode
        prefix_text = decode(self.tokens[self.prefix_offset:self.read_offset])
        new_text = decode(self.tokens[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            return new_text[len(prefix_text):]
        return ""

    def _match_stop(self, delta_len: int) -> bool:
        """Search the tail that the new delta could have completed; cut the text at the earliest match."""
        best = None
        for stop in self.stops:
            start = max(0, len(self.text) - delta_len - len(stop) + 1)
            at = self.text.find(stop, start)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return False
        at, stop = best
        self.stopped = stop
        self.text = self.text[: at + len(stop) if self.include_stop else at]
        return True

    def _release(self, upto: int) -> str:
        upto = min(upto, len(self.text))
        if upto <= self.emitted:
            return ""
        out, self.emitted = self.text[self.emitted:upto], upto
        return out
