"""TEST DOUBLE of tensorrt_llm/llmapi/tokenizer.py@89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0 (the names the LLM
uses to load a tokenizer and to hand xgrammar its vocabulary). Mirrored behaviour:

- tokenizer_factory(None) -> None; a path -> TransformersTokenizer.from_pretrained(path, legacy=False,
  padding_side="left", truncation_side="left", trust_remote_code=True, use_fast=True) (AutoTokenizer: raises
  when the directory holds no tokenizer); a TokenizerBase as is; a PreTrainedTokenizerBase wrapped.
- load_hf_tokenizer(dir): the same load, but a failure is a warning and None.
- _xgrammar_tokenizer_info(tokenizer): unwraps a TokenizerBase; stop_token_ids [eos_token_id] (so None is an
  AttributeError); the vocabulary sorted by id from get_vocab(); a PreTrainedTokenizerFast gives
  {"encoded_vocab", "tokenizer_str": backend_tokenizer.to_str(), "stop_token_ids"}; anything else but a
  tiktoken vocabulary is ValueError("Unsupported tokenizer type: ...").
"""

from __future__ import annotations

import logging

logger = logging.getLogger("tensorrt_llm")

_LOAD_KWARGS = {"legacy": False, "padding_side": "left", "truncation_side": "left", "trust_remote_code": True,
                "use_fast": True}


class TokenizerBase:
    """The protocol class (a PreTrainedTokenizerBase subclass in TensorRT-LLM)."""


class TransformersTokenizer(TokenizerBase):
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def decode(self, token_ids, *args, **kwargs) -> str:
        return self.tokenizer.decode(token_ids, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_dir: str, **kwargs):
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(pretrained_model_dir, **kwargs))


def tokenizer_factory(obj=None, **kwargs):
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase

    if obj is None:
        return None
    if isinstance(obj, (str, Path)):
        return TransformersTokenizer.from_pretrained(obj, **{**_LOAD_KWARGS, **kwargs})
    if isinstance(obj, TokenizerBase):
        return obj
    if isinstance(obj, PreTrainedTokenizerBase):
        return TransformersTokenizer(obj)
    raise TypeError(f"Unrecognized tokenizer {obj}")


def load_hf_tokenizer(model_dir: str, trust_remote_code: bool = True, use_fast: bool = True, **kwargs):
    try:
        return TransformersTokenizer.from_pretrained(model_dir, **{**_LOAD_KWARGS, "use_fast": use_fast, **kwargs})
    except Exception as e:
        logger.warning(f"Failed to load hf tokenizer from {model_dir}, encounter error: {e}")
        return None


def _xgrammar_tokenizer_info(tokenizer):
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, TokenizerBase):
        tokenizer = tokenizer.tokenizer
    stop_token_ids = [tokenizer.eos_token_id]
    try:
        encoded_vocab = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda x: x[1])]
    except AttributeError as e:
        raise ValueError(f"Cannot get the vocabulary of the tokenizer {type(tokenizer)}. The tokenizer "
                         "should have a get_vocab method.") from e
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        return {"encoded_vocab": encoded_vocab, "tokenizer_str": tokenizer.backend_tokenizer.to_str(),
                "stop_token_ids": stop_token_ids}
    if "vocab_file" in tokenizer.vocab_files_names and "tiktoken" in tokenizer.vocab_files_names["vocab_file"]:
        return {"encoded_vocab": encoded_vocab, "stop_token_ids": stop_token_ids}
    raise ValueError(f"Unsupported tokenizer type: {type(tokenizer)}")
