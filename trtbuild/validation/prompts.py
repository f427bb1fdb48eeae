"""Validation prompts: the bundled default set, a user's JSONL file, and summarization articles.

A prompt file has one JSON object per line:
    {"messages": [{"role": "user", "content": "..."}], "max_tokens": 64, "name": "greeting"}
    {"prompt": "Once upon a time"}                       # plain-text completion, BOS + text
Summarization input is {"article": "...", "highlights": "..."} per line, or a `datasets` name on a machine
that reaches the Hugging Face hub (cnn_dailymail, TensorRT-LLM's own accuracy check).
Token ids always come from trtbuild.tokenizer (mistral-common v3), for the engine and the reference alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from trtbuild.errors import TrtbuildError
from trtbuild.tokenizer import Tokenizer

BUNDLED = "validation_prompts.jsonl"
PROMPT_LINE = 'each line must be {"messages": [...]} or {"prompt": "..."}, optional "max_tokens"'
ARTICLE_LINE = 'each line must be {"article": "...", "highlights": "..."}'
SUMMARY_INSTRUCTION = "Summarize the following news article in two or three sentences.\n\n"
# `datasets` names that need a config, and the fields holding the text and its reference summary.
DATASETS = {"cnn_dailymail": ("3.0.0", "article", "highlights"), "xsum": (None, "document", "summary"),
            "EdinburghNLP/xsum": (None, "document", "summary")}


@dataclass
class Prompt:
    name: str
    messages: list[dict] | None = None  # chat prompt (mistral-common v3 chat encoding)
    text: str | None = None  # plain-text completion prompt
    max_tokens: int | None = None  # overrides the run's --max-tokens
    lang: str = ""
    origin: str = ""  # where it was read: "bundled:3", "prompts.jsonl:7"
    references: list[str] = field(default_factory=list)  # summarization: the human-written summaries

    @property
    def kind(self) -> str:
        return "chat" if self.messages is not None else "completion"

    def encode(self, tokenizer: Tokenizer) -> list[int]:
        try:
            return tokenizer.encode_chat(self.messages) if self.messages is not None else tokenizer.encode(self.text)
        except TrtbuildError as exc:
            raise TrtbuildError(f"{self.origin}: {exc}") from None


def prompt_hash(token_ids: list[int]) -> str:
    """sha256 of the prompt's token ids written as decimal numbers joined by commas."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrtbuildError(f"cannot read {path}: {exc}; pass a UTF-8 JSONL file") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrtbuildError(f"{path}:{number}: not valid JSON ({exc.msg}); {what}") from None
        if not isinstance(row, dict):
            raise TrtbuildError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}; {what}")
        rows.append((number, row))
    if not rows:
        raise TrtbuildError(f"{path} holds no prompts; {what}")
    return rows


def parse_prompt(row: dict, origin: str, default_name: str) -> Prompt:
    def bad(why: str) -> TrtbuildError:
        return TrtbuildError(f"{origin}: {why}; {PROMPT_LINE}")

    messages, text, max_tokens = row.get("messages"), row.get("prompt"), row.get("max_tokens")
    if (messages is None) == (text is None):
        raise bad('give exactly one of "messages" and "prompt"')
    if messages is not None and not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise bad('"messages" must be a non-empty list of {"role": ..., "content": "..."}')
    if text is not None and not (isinstance(text, str) and text):
        raise bad('"prompt" must be a non-empty string')
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise bad(f'"max_tokens" must be a positive integer, got {max_tokens!r}')
    return Prompt(name=str(row.get("name") or row.get("id") or default_name), messages=messages, text=text,
                  max_tokens=max_tokens, lang=str(row.get("lang", "")), origin=origin)


def bundled_prompts() -> list[Prompt]:
    """The default set written for this project: chat in six languages, code, maths, a multi-turn chat,
    a system prompt, a ~330-token long-context question and two plain-text completions."""
    path = Path(str(resources.files("trtbuild.data").joinpath(BUNDLED)))
    return [parse_prompt(row, f"bundled:{n}", f"prompt-{n}") for n, row in read_jsonl(path, PROMPT_LINE)]


def load_prompts(spec: str | Path | None) -> tuple[str, list[Prompt]]:
    """(description, prompts) from None / "bundled" (the default set) or a JSONL file."""
    if spec is None or str(spec) == "bundled":
        return "bundled", bundled_prompts()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TrtbuildError(f"prompt file {spec} not found; pass a JSONL file ({PROMPT_LINE})")
    return str(path), [parse_prompt(row, f"{path}:{n}", f"line-{n}") for n, row in read_jsonl(path, PROMPT_LINE)]


# --- summarization --------------------------------------------------------------------------------

def load_articles(spec: str, limit: int) -> tuple[str, list[tuple[str, str]]]:
    """(description, [(article, highlights)]) from a local JSONL file or a `datasets` name[:config]."""
    path = Path(spec).expanduser()
    if path.is_file():
        articles = []
        for number, row in read_jsonl(path, ARTICLE_LINE):
            article, summary = row.get("article"), row.get("highlights")
            if not (isinstance(article, str) and article.strip() and isinstance(summary, str) and summary.strip()):
                raise TrtbuildError(f"{path}:{number}: \"article\" and \"highlights\" must be non-empty strings; "
                                    f"{ARTICLE_LINE}")
            articles.append((article, summary))
        return str(path), articles[:limit]
    return f"datasets:{spec}", _dataset_articles(spec, limit)


def _dataset_articles(spec: str, limit: int) -> list[tuple[str, str]]:
    name, _, config = spec.partition(":")
    default_config, text_field, summary_field = DATASETS.get(name, (None, "article", "highlights"))
    hint = f"pass a local JSONL file instead ({ARTICLE_LINE})"
    try:
        import datasets  # optional and heavy: only for this check
    except ImportError:
        raise TrtbuildError(f"summarization dataset {spec!r} needs the `datasets` package "
                            f"(pip install datasets) or {hint}") from None
    try:
        data = datasets.load_dataset(name, config or default_config, split=f"test[:{limit}]")
    except Exception as exc:  # offline, unknown name, gated: all the same to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrtbuildError(f"cannot load dataset {spec!r} ({first}); {hint}") from None
    missing = {text_field, summary_field} - set(data.column_names)
    if missing:
        raise TrtbuildError(f"dataset {spec!r} has no column(s) {sorted(missing)}; {hint}")
    return [(row[text_field], row[summary_field]) for row in data]


def summary_prompts(articles: list[tuple[str, str]], tokenizer: Tokenizer, max_prompt_tokens: int,
                    max_tokens: int) -> list[Prompt]:
    """One chat prompt per article, the article cut (at a word boundary) to fit max_prompt_tokens."""
    prompts = []
    for i, (article, summary) in enumerate(articles, 1):
        words = article.split()
        keep = len(words)
        if not _fits(words, tokenizer, max_prompt_tokens):  # binary search: the longest prefix that fits
            fits, too_long = 0, len(words)
            while too_long - fits > 1:
                middle = (fits + too_long) // 2
                fits, too_long = (middle, too_long) if _fits(words[:middle], tokenizer, max_prompt_tokens) \
                    else (fits, middle)
            keep = fits
        if keep == 0:
            raise TrtbuildError(f"summarization article {i} cannot fit in {max_prompt_tokens} prompt tokens")
        prompts.append(Prompt(name=f"article-{i}", max_tokens=max_tokens, origin=f"article {i}",
                              messages=[{"role": "user", "content": SUMMARY_INSTRUCTION + " ".join(words[:keep])}],
                              references=[summary]))
    return prompts


def _fits(words: list[str], tokenizer: Tokenizer, limit: int) -> bool:
    content = SUMMARY_INSTRUCTION + " ".join(words)
    return len(tokenizer.encode_chat([{"role": "user", "content": content}])) <= limit
