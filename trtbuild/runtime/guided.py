"""Guided decoding: what a request may generate (a JSON schema, any JSON object, tool calls) and per-token
logit bias, as one small object the torch sampler applies to one request's logits row.

    guide = {"type": "json_schema", "schema": {...}}   # or {"type": "json_object"},
                                                       # or {"type": "tool_calls", "schema": {array schema}}
    SamplingParams(..., guided=guide, logit_bias={1234: -100.0})

Grammar engine: llguidance (Rust, no Python dependencies, installs without touching torch/transformers/
numpy). xgrammar is what TensorRT-LLM uses, but its wheel requires torch, transformers and triton: on a
CPU box it would pull a GPU compiler stack into the venv. outlines-core only compiles regexes (JSON schemas
become regexes, with no recursion). llguidance takes JSON schemas and Lark grammars (special tokens
included), computes a mask in microseconds, and vLLM and TensorRT-LLM's PyTorch backend ship it too.

On the TensorRT-LLM runtime the same guide maps to TensorRT-LLM 1.2's own guided decoding
(`to_trtllm_guided_decoding`): `SamplingParams(guided_decoding=GuidedDecodingParams(json=... |
json_object=True))`, enforced by xgrammar inside the engine; the TensorRT backend (`_TrtLLM`) supports
only `guided_decoding_backend="xgrammar"` (tensorrt_llm/llmapi/llm.py@4c05a748, `_TrtLLM._build_model`,
which builds xgrammar's tokenizer info from the LLM's tokenizer, so the LLM must load one: trtllm_runtime.
llm_kwargs passes the engine dir's Hugging Face tokenizer.json, which trtbuild.hf_tokenizer writes when the
source has none). A forced tool call is the JSON schema of the calls array: Mistral's [TOOL_CALLS] control
token cannot be part of an xgrammar JSON schema, and the tool parser reads a bare array when tool_choice
forced a call (as vLLM does).

Mistral's SentencePiece tokenizer starts a reply with a "▁"-prefixed piece ("▁{"), so every grammar here
allows one leading space before the JSON value; the text we return drops it (as Mistral's decode does).
Whitespace between JSON tokens is at most one space (WHITESPACE: `{"a": 1, "b": 2}` or compact): with
free whitespace a masked model drifts into runs of blank lines and spaces (measured on the embedded
model: 40 tokens of `"name":\n\n\n\n   ` instead of a value).
"""

from __future__ import annotations

import copy
import json
import logging
import threading

log = logging.getLogger("trtbuild.runtime")

GUIDE_TYPES = ("json_object", "json_schema", "tool_calls")
TOOL_CALLS_ID = 5  # v3 control token [TOOL_CALLS]
WHITESPACE = r"[ ]?"
TRTLLM_GUIDED_DECODING_BACKEND = "xgrammar"  # the only one TensorRT-LLM 1.2's TensorRT backend accepts


def lark_grammar(guide: dict) -> str:
    """The llguidance Lark grammar of a guide (see the module docstring)."""
    kind = guide.get("type")
    if kind not in GUIDE_TYPES:
        raise ValueError(f"unknown guide type {kind!r}; expected one of {', '.join(GUIDE_TYPES)}")
    schema = {"type": "object"} if kind == "json_object" else copy.deepcopy(guide.get("schema"))
    if not isinstance(schema, dict):
        raise ValueError("a json_schema guide needs a JSON schema object")
    options = {"whitespace_pattern": WHITESPACE}
    if isinstance(schema.get("x-guidance"), dict):
        options = {**schema["x-guidance"], **options}
    schema["x-guidance"] = options
    # A tool call may begin with Mistral's own [TOOL_CALLS] token, as the model emits it unconstrained.
    prefix = f"<[{TOOL_CALLS_ID}]>? " if kind == "tool_calls" else ""
    return f'start: {prefix}" "? value\nvalue: %json {json.dumps(schema)}\n'


def check_guide(guide: dict) -> str | None:
    """None when llguidance can enforce the guide, else why not (one line, for a 400)."""
    try:
        import llguidance
    except ImportError:
        return "structured output needs the llguidance package (pip install 'llguidance>=1.0,<2')"
    try:
        grammar = llguidance.LLMatcher.grammar_from_lark(lark_grammar(guide))
    except (ValueError, TypeError) as exc:
        return str(exc)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        return messages[0].splitlines()[0] if messages else "invalid schema"
    return None


def to_trtllm_guided_decoding(guide: dict) -> dict:
    """Keyword arguments of tensorrt_llm.sampling_params.GuidedDecodingParams (1.2) for a guide.

    GuidedDecodingParams(json=..., regex=..., grammar=..., json_object=False, structural_tag=...), one
    of them set (tensorrt_llm/sampling_params.py@a98a9061). A tool-call guide becomes the JSON schema of
    the calls array: TensorRT-LLM's xgrammar masks text only, and the parser accepts a bare array when
    tool_choice forced a call (as vLLM does)."""
    kind = guide.get("type")
    if kind == "json_object":
        return {"json_object": True}
    if kind in ("json_schema", "tool_calls"):
        return {"json": guide["schema"]}
    raise ValueError(f"unknown guide type {kind!r}")


def trtllm_guided_sampling(params, vocab_size: int) -> dict:
    """Extra tensorrt_llm.SamplingParams (1.2) keyword arguments for a request's guide and logit bias:
    guided_decoding (GuidedDecodingParams) and embedding_bias (a float32 [vocab_size] tensor added to the
    logits: TensorRT-LLM's name for a logit bias; sampling_params.py@a98a9061)."""
    out: dict = {}
    if params.guided is not None:
        from tensorrt_llm.sampling_params import GuidedDecodingParams

        out["guided_decoding"] = GuidedDecodingParams(**to_trtllm_guided_decoding(params.guided))
    if params.logit_bias:
        import torch

        bias = torch.zeros(vocab_size, dtype=torch.float32)
        bias[list(params.logit_bias)] = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)
        out["embedding_bias"] = bias
    return out


# --- the torch sampler's per-request mask ------------------------------------------------------------
_llg_lock = threading.Lock()


def llg_tokenizer(tokenizer):
    """llguidance's view of our (mistral-common v3 SentencePiece) tokenizer, built once per tokenizer
    (about 1 s: it reads all 32768 pieces)."""
    cached = getattr(tokenizer, "_llguidance", None)
    if cached is not None:
        return cached
    with _llg_lock:
        if getattr(tokenizer, "_llguidance", None) is None:
            import llguidance

            tokenizer._llguidance = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer)))
    return tokenizer._llguidance


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads: every token's bytes, the special ids, and an encoder."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_token_id, self.bos_token_id = tokenizer.eos_id, tokenizer.bos_id
        self.special_token_ids = sorted(tokenizer.control_ids)
        tokens = []
        for token_id in range(tokenizer.vocab_size):
            piece = tokenizer.id_to_piece(token_id)
            if token_id in tokenizer.control_ids:  # llguidance names special tokens <...>: [INST] -> <INST>
                piece = f"<{piece[1:-1]}>" if piece.startswith("[") else piece
                tokens.append(piece.encode())
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # byte fallback
                tokens.append(bytes([int(piece[3:5], 16)]))
            else:
                tokens.append(piece.replace("\u2581", " ").encode())
        self.tokens = tokens
        self.newline_id = tokenizer.encode("\n", bos=False)[-1]

    def __call__(self, text) -> list[int]:
        # llguidance needs tokenize(s) to decode to s exactly: SentencePiece adds a leading "▁", so encode
        # after a newline (always its own byte piece) and drop everything up to it.
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        ids = self.tokenizer.encode("\n" + text, bos=False)
        return ids[ids.index(self.newline_id) + 1:]


class LogitsMask:
    """One request's logit bias and grammar: apply() edits its logits row before sampling, advance()
    feeds the sampled token to the grammar. Built lazily on the engine thread (the first grammar of a
    tokenizer takes about a second; later ones milliseconds)."""

    def __init__(self, tokenizer, logit_bias: dict | None = None, guide: dict | None = None):
        self.tokenizer, self.guide = tokenizer, guide
        self.bias = {int(k): float(v) for k, v in (logit_bias or {}).items()}
        self._bias_ids = self._bias_values = None
        self.matcher = None

    def apply(self, row):
        """row: float32 logits [V] (modified in place and returned)."""
        import numpy as np
        import torch

        if self.bias:
            if self._bias_ids is None:
                self._bias_ids = torch.tensor(list(self.bias), dtype=torch.long)
                self._bias_values = torch.tensor(list(self.bias.values()), dtype=row.dtype)
            row[self._bias_ids] += self._bias_values
        if self.guide is not None:
            matcher = self._matcher()
            if matcher.is_error():
                log.error("grammar failed, output is no longer constrained: %s", matcher.get_error()[:200])
                return row
            bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            allowed = torch.from_numpy(bits[: row.numel()].astype(bool))
            if len(allowed) < row.numel():
                allowed = torch.cat([allowed, torch.zeros(row.numel() - len(allowed), dtype=torch.bool)])
            row.masked_fill_(~allowed, float("-inf"))
            if row.max() == float("-inf"):  # penalties banned every token the grammar allows: allow them all
                row.masked_fill_(allowed, 0.0)
        return row

    def advance(self, token_id: int) -> None:
        if self.guide is not None and not self._matcher().is_error():
            self._matcher().consume_token(int(token_id))

    def _matcher(self):
        if self.matcher is None:
            import llguidance

            grammar = llguidance.LLMatcher.grammar_from_lark(lark_grammar(self.guide))
            self.matcher = llguidance.LLMatcher(llg_tokenizer(self.tokenizer), grammar, log_level=0)
        return self.matcher


class GrammarProcessor:
    """A request's grammar as one of the torch sampler's logits processors (SamplingParams.logits_processors
    form, f(output_ids, row) -> row): feeds the grammar the tokens sampled since its last call, then masks.
    (logit_bias needs no processor: the sampler adds it for the whole batch at once.)"""

    def __init__(self, tokenizer, guide: dict):
        self.mask, self.fed = LogitsMask(tokenizer, None, guide), 0

    def __call__(self, output_ids, row):
        for token in output_ids[self.fed:]:
            self.mask.advance(token)
        self.fed = len(output_ids)
        return self.mask.apply(row)


def grammar_processors(params, tokenizer) -> list:
    """The processors a request's guide needs (none without one: the sampler's batched fast path)."""
    return [GrammarProcessor(tokenizer, params.guided)] if params.guided is not None else []


def logits_mask(params, tokenizer) -> LogitsMask | None:
    """The mask a request needs, or None (the sampler's fast path)."""
    if not params.logit_bias and params.guided is None:
        return None
    return LogitsMask(tokenizer, params.logit_bias, params.guided)
