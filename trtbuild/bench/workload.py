"""What each benchmark request asks for: a prompt of known token length and an exact output length.

Synthetic prompts have an exact input length: random ids -> decode -> re-encode -> trim or extend ->
repeat until the re-encoded text has exactly the asked length (vLLM PR #24937; random ids alone are
wrong most of the time because decode/encode is not an identity). Lengths count the BOS token, as the
engine sees the prompt. The prompt is kept both as ids (offline, and online `--prompt-format ids`) and
as the text that encodes to them (online default: any OpenAI-compatible server accepts text).

Chat workloads (`endpoint="chat"`, online only) send the text as one user message; the server applies its
chat template, so the length that is exact is the TEMPLATED prompt (Tokenizer.encode_chat, Mistral v3:
`<s>[INST] text[/INST]`, BOS included) and prompt_ids hold those templated ids.

Datasets are JSON lines: trtllm-bench's {"task_id", "input_ids", "output_tokens"} or
{"prompt": text, "output_tokens": N}.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from trtbuild.errors import TrtbuildError
from trtbuild.tokenizer import Tokenizer

MAX_ADJUST_ROUNDS = 64
ENDPOINTS = (None, "completions", "chat")  # None: offline, no HTTP endpoint


@dataclass
class WorkloadSpec:
    input_len: int = 128
    output_len: int = 128
    dataset: str | None = None  # a JSONL file; replaces input_len/output_len
    num_requests: int = 64  # measured requests (the run may stop earlier at --duration)
    warmup: int = 2  # extra requests sent first and left out of every statistic
    seed: int = 0
    ignore_eos: bool = True  # exact output lengths: ignore_eos + max_tokens (+ min_tokens)
    # online: "completions" (the default there) or "chat"; None offline: the ids go straight to the engine
    endpoint: str | None = None
    temperature: float = 0.0  # the sampling asked for (greedy), online and offline; recorded with the run
    # online: fields added to every request body, for a server's own knobs (e.g. transformers serve's
    # generation_config, its lever for exact lengths: bench/compare_transformers_serve.py)
    extra_body: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkloadSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class BenchRequest:
    index: int
    prompt_ids: list[int]
    prompt_text: str | None
    output_len: int
    warmup: bool = False

    @property
    def input_len(self) -> int:
        return len(self.prompt_ids)


def _text_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """The id range of ordinary pieces: past the control tokens and the 256 byte-fallback pieces."""
    first = max(tokenizer.control_ids, default=0) + 1
    while first < tokenizer.vocab_size and tokenizer.id_to_piece(first).startswith("<0x"):
        first += 1
    return first, tokenizer.vocab_size


def _template(tokenizer: Tokenizer, chat: bool) -> tuple[Callable[[str], list[int]], int, int]:
    """(encode, tokens before the text, tokens after it): plain prompts are BOS + text; a chat prompt is
    the v3 template around one user message, measured here rather than assumed."""
    if not chat:
        return (lambda text: tokenizer.encode(text, bos=True)), 1, 0

    def encode(text: str) -> list[int]:
        return tokenizer.encode_chat([{"role": "user", "content": text}])

    empty = encode("")
    probe = tokenizer.encode("x", bos=False)
    full = encode("x")
    for before in range(len(empty) + 1):
        if full == empty[:before] + probe + empty[before:]:
            return encode, before, len(empty) - before
    raise TrtbuildError("the chat template does not keep the user text as is; cannot build exact-length prompts")


def exact_length_prompt(tokenizer: Tokenizer, length: int, rng: np.random.Generator,
                        chat: bool = False) -> tuple[list[int], str]:
    """(ids, text) with len(ids) == length and ids == the text re-encoded: tokenizer.encode(text, bos=True),
    or with chat=True the templated prompt tokenizer.encode_chat([{"role": "user", "content": text}])."""
    encode, before, after = _template(tokenizer, chat)
    overhead = before + after
    if length < overhead + 1:
        what = "the chat template's tokens" if chat else "BOS"
        raise TrtbuildError(f"--input-len must be >= {overhead + 1} ({what} plus at least one token), got {length}")
    lo, hi = _text_ids(tokenizer)
    body = rng.integers(lo, hi, length - overhead).tolist()
    for _ in range(MAX_ADJUST_ROUNDS):
        text = tokenizer.decode(body)
        ids = encode(text)
        if len(ids) == length:
            return ids, text
        inner = ids[before:len(ids) - after]  # the text's own tokens, template stripped
        if len(ids) > length:
            body = inner[:length - overhead]  # a prefix of a valid encoding; its text re-encodes close to it
        else:
            body = inner + rng.integers(lo, hi, length - len(ids)).tolist()
    raise TrtbuildError(f"could not build a prompt of exactly {length} tokens in {MAX_ADJUST_ROUNDS} rounds; "
                        "try another --seed")


def synthetic(tokenizer: Tokenizer, spec: WorkloadSpec) -> list[BenchRequest]:
    rng = np.random.default_rng(spec.seed)
    total = spec.warmup + spec.num_requests
    out = []
    for i in range(total):
        ids, text = exact_length_prompt(tokenizer, spec.input_len, rng, chat=spec.endpoint == "chat")
        out.append(BenchRequest(i, ids, text, spec.output_len, warmup=i < spec.warmup))
    return out


def read_dataset(path: str | Path, tokenizer: Tokenizer) -> list[tuple[list[int], str | None, int]]:
    """Parse a JSONL dataset into (prompt ids, prompt text or None, output tokens) rows."""
    path = Path(path)
    if not path.is_file():
        raise TrtbuildError(f"dataset {path} does not exist; pass a JSONL file (see docs/benchmarks.md)")
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrtbuildError(f"{where}: not JSON ({exc.msg}); one JSON object per line") from None
            if not isinstance(item, dict):
                raise TrtbuildError(f"{where}: expected a JSON object per line")
            out_len = item.get("output_tokens", item.get("max_tokens"))
            if not isinstance(out_len, int) or isinstance(out_len, bool) or out_len < 1:
                raise TrtbuildError(f"{where}: output_tokens must be a positive integer, got {out_len!r}")
            if "input_ids" in item:
                ids = item["input_ids"]
                if not (isinstance(ids, list) and ids and all(isinstance(t, int) and 0 <= t < tokenizer.vocab_size
                                                             for t in ids)):
                    raise TrtbuildError(f"{where}: input_ids must be a non-empty list of token ids "
                                        f"in [0, {tokenizer.vocab_size})")
                rows.append((list(ids), None, out_len))
            elif isinstance(item.get("prompt"), str) and item["prompt"]:
                rows.append((tokenizer.encode(item["prompt"], bos=True), item["prompt"], out_len))
            else:
                raise TrtbuildError(f"{where}: needs \"input_ids\" (trtllm-bench format) or a non-empty \"prompt\"")
    if not rows:
        raise TrtbuildError(f"dataset {path} is empty")
    return rows


def from_dataset(tokenizer: Tokenizer, spec: WorkloadSpec) -> list[BenchRequest]:
    """Dataset rows in file order, cycled when more requests are asked for than it holds."""
    rows = read_dataset(spec.dataset, tokenizer)
    if spec.endpoint == "chat":
        rows = [chat_row(tokenizer, *row) for row in rows]
    total = spec.warmup + spec.num_requests
    return [BenchRequest(i, *rows[i % len(rows)], warmup=i < spec.warmup) for i in range(total)]


def chat_row(tokenizer: Tokenizer, ids: list[int], text: str | None, out_len: int) -> tuple[list[int], str, int]:
    """A dataset row as a chat request: its text (input_ids decoded, control tokens dropped, so ids that
    already hold a template are not templated twice) becomes the user message; the input length is what
    the templated message encodes to, which can differ from len(input_ids)."""
    content = text if text is not None else tokenizer.decode(ids)
    return tokenizer.encode_chat([{"role": "user", "content": content}]), content, out_len


def build_requests(tokenizer: Tokenizer, spec: WorkloadSpec) -> list[BenchRequest]:
    if spec.endpoint not in ENDPOINTS:
        raise TrtbuildError(f"--endpoint must be completions or chat, got {spec.endpoint!r}")
    if spec.num_requests < 1:
        raise TrtbuildError(f"--num-requests must be >= 1, got {spec.num_requests}")
    if spec.warmup < 0:
        raise TrtbuildError(f"--warmup must be >= 0, got {spec.warmup}")
    if spec.dataset:
        return from_dataset(tokenizer, spec)
    if spec.output_len < 1:
        raise TrtbuildError(f"--output-len must be >= 1, got {spec.output_len}")
    return synthetic(tokenizer, spec)


def check_fits(requests: list[BenchRequest], max_input_len: int, max_seq_len: int) -> None:
    """Refuse a workload the engine would cut short (a 'length' finish that is not the asked length)."""
    for r in requests:
        if r.input_len > max_input_len or r.input_len + r.output_len > max_seq_len:
            raise TrtbuildError(f"request {r.index} needs {r.input_len} prompt + {r.output_len} output tokens; the "
                                f"engine takes prompts up to {max_input_len} and {max_seq_len} tokens in all: "
                                "lower --input-len/--output-len")


def write_trtllm_dataset(requests: list[BenchRequest], path: str | Path) -> Path:
    """The same workload in trtllm-bench's format, to run it side by side with `trtllm-bench --dataset`."""
    from trtbuild.workspace import atomic_write_text

    lines = [json.dumps({"task_id": r.index, "input_ids": r.prompt_ids, "output_tokens": r.output_len})
             for r in requests if not r.warmup]
    return atomic_write_text(path, "\n".join(lines) + "\n")
