"""The Mistral v3 tokenizer, from mistral-common: the one source of token ids in trtbuild.

Hugging Face tokenizers built from the same SentencePiece file disagree with mistral-common on runs of
spaces and on a typed "[INST]" (../shared/notes/stack.md), and chat templates mis-handle system
messages; so token ids and chat prompts always come from here.
"""

from __future__ import annotations

import functools
from pathlib import Path

from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from trtbuild.errors import TrtbuildError

TOKENIZER_FILES = ("tokenizer.model.v3", "tokenizer.model")


class Tokenizer:
    def __init__(self, mistral: MistralTokenizer):
        self.mistral = mistral
        self.sp = mistral.instruct_tokenizer.tokenizer
        self.bos_id: int = self.sp.bos_id
        self.eos_id: int = self.sp.eos_id
        self.vocab_size: int = self.sp.n_words
        self.control_ids = frozenset(self.sp.special_ids)

    def decode_context(self, prompt_ids: list[int], n: int = 6) -> list[int]:
        """The prompt tail that incremental decoding starts from: the last n ids after the last control
        token. After [/INST] the reply decodes like Mistral's own decode (no leading space); after plain
        text, a continuation keeps its leading space (" time" after "Once upon a")."""
        tail = []
        for token in reversed(prompt_ids[-n:]):
            if token in self.control_ids:
                break
            tail.append(token)
        return tail[::-1]

    @classmethod
    @functools.cache
    def v3(cls) -> Tokenizer:
        """The v3 SentencePiece tokenizer that mistral-common ships (offline, 0.05 s)."""
        return cls(MistralTokenizer.v3())

    @classmethod
    def from_model_dir(cls, model_dir: str | Path | None) -> Tokenizer:
        """The model's own tokenizer.model(.v3) when it ships one, else mistral-common's v3."""
        for name in TOKENIZER_FILES:
            path = Path(model_dir or "") / name
            if model_dir and path.is_file():
                return _from_file(str(path))
        return cls.v3()

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Plain text -> ids. A literal "[INST]" in the text stays text, never the control token."""
        return self.sp.encode(text, bos=bos, eos=False)

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """OpenAI-style chat messages -> ids with Mistral's own v3 rules (system joined into the last user
        turn, tools before the last [INST]). Raises TrtbuildError for messages v3 cannot encode."""
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        # v3 joins every system message into the last user turn wherever it stands, but mistral-common's
        # validator rejects a system message after an assistant turn: hand them over first.
        messages = [m for m in messages if m.get("role") == "system"] + \
                   [m for m in messages if m.get("role") != "system"]
        try:
            request = ChatCompletionRequest(messages=messages, tools=tools or None)
            return self.mistral.encode_chat_completion(request).tokens
        except TrtbuildError:
            raise
        except Exception as exc:  # mistral-common raises pydantic and its own validation errors
            raise TrtbuildError(f"cannot encode these chat messages: {_first_line(exc)}") from None

    # --- decoding -------------------------------------------------------------------------------
    def decode(self, ids: list[int]) -> str:
        """Ids -> text, control tokens dropped (as an OpenAI server returns them)."""
        return self.sp.decode(list(ids), special_token_policy=SpecialTokenPolicy.IGNORE)

    def id_to_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)

    @functools.cached_property
    def piece_texts(self) -> list[str | None]:
        """Token id -> the text it adds after other text (its piece, U+2581 as a space), or None where
        decoding depends on neighbours (byte-fallback, control and unknown pieces). Incremental
        detokenization (runtime/detok.py) uses it to skip two SentencePiece decodes per plain token."""
        model = self.sp._model  # the sentencepiece processor: 0.1 s for the whole vocabulary
        return [None if model.is_control(i) or model.is_byte(i) or model.is_unknown(i) or model.is_unused(i)
                else model.id_to_piece(i).replace("\u2581", " ") for i in range(model.get_piece_size())]


@functools.cache
def _from_file(path: str) -> Tokenizer:
    return Tokenizer(MistralTokenizer.from_file(path))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:3]) if text else type(exc).__name__
