"""/v1/completions `echo`: the prompt comes back in front of the completion, with its logprobs when asked.

This is how accuracy tools score text (lm-evaluation-harness `local-completions`: prompt as token ids,
`echo: true, logprobs: 1, max_tokens: 1`, then the logprobs of the continuation's tokens are read from
the echoed prompt). As in OpenAI's legacy API and vLLM: the first prompt token has no logprob (null, and
null top_logprobs); `max_tokens: 0` with echo scores the prompt and generates nothing.

Prompt logprobs come from Engine.score (teacher-forced, one forward over the prompt, off the event loop).
An engine that cannot score (TensorRT-LLM engines built without gather_context_logits) answers echo with
logprobs with a 400 that says so, before anything runs; echo without logprobs works everywhere.

With `stream: true` (vLLM's serving_completion.py completion_stream_generator does the same per choice
index): each choice's prompt is sent first, in a chunk of its own (text, and its logprobs when asked; with
max_tokens 0 that chunk is the whole choice, finish_reason "length"), then the generated deltas. vLLM
sends the prompt in the same chunk as the first generated delta; a chunk of its own concatenates to the
same text and reaches the client before the first token. Every token of an echo is listed by its piece,
generated ones included (EchoRenderer), so the streamed lists equal the non-streamed ones entry for entry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Sequence

from trtbuild.runtime.interface import Engine, EngineInfo, GenerationResult, TokenEvent
from trtbuild.server.errors import bad_request
from trtbuild.server.render import Renderer, TokenTexts, _finite

PromptLogprobs = tuple[list[float | None], list[list[tuple[int, float]] | None]]


@dataclass
class EchoedPrompt:
    text: str  # the prompt as shown: the string sent, or the decoded token ids
    token_ids: list[int]
    scored: PromptLogprobs | None  # with logprobs only


def check_can_score(info: EngineInfo) -> None:
    """The cheap check of echo with logprobs: a 400 before anything runs when the engine cannot score."""
    if not info.can_score:
        raise bad_request(f"echo with logprobs needs prompt logprobs, which the {info.backend} engine "
                          f"{info.name} cannot compute (TensorRT-LLM engines need gather_context_logits); "
                          "send echo without logprobs.", param="echo")


async def prompt_logprobs(engine: Engine, prompt_ids: Sequence[int], top: int) -> PromptLogprobs:
    """(logprob of each prompt token given the ones before it, its `top` alternatives); None first."""
    check_can_score(engine.info)
    ids = list(prompt_ids)
    if len(ids) < 2:
        return [None] * len(ids), [None] * len(ids)
    rows = await asyncio.to_thread(engine.score, ids[:1], ids[1:])  # row i: log p(. | ids[:i + 1])
    import numpy as np

    lps: list[float | None] = [None]
    tops: list[list[tuple[int, float]] | None] = [None]
    k = max(top, 1)
    for i, token in enumerate(ids[1:]):
        row = rows[i]
        lps.append(float(row[token]))
        best = np.argpartition(-row, k - 1)[:k]
        best = best[np.argsort(-row[best])]
        tops.append([(int(t), float(row[t])) for t in best[:top]] if top else None)
    return lps, tops


async def echoed_prompts(engine: Engine, body, prompts: Sequence[list[int]]) -> list[EchoedPrompt]:
    """Each prompt's echo: its text and, with logprobs, its scores (engine.score off the event loop)."""
    wants, top = body.logprob_settings()
    texts = body.prompts()
    out = []
    for p, prompt in enumerate(prompts):
        scored = await prompt_logprobs(engine, prompt, top) if wants else None
        shown = texts[p] if isinstance(texts[p], str) else engine.tokenizer.decode(prompt)
        out.append(EchoedPrompt(shown, list(prompt), scored))
    return out


def token_logprobs(texts: TokenTexts, token_ids: Sequence[int], lps: Sequence[float | None],
                   tops: Sequence[list[tuple[int, float]] | None], top: int, offset: int = 0) -> tuple[dict, int]:
    """Completions logprobs of echoed tokens, each listed by its piece (prompt tokens have no release
    text), and the text offset after them."""
    tokens, offsets, offset = texts.pieces_with_offsets(token_ids, offset)
    return {
        "tokens": tokens,
        "token_logprobs": [None if lp is None else _finite(lp) for lp in lps],
        "top_logprobs": [None if alt is None else {texts(t)[0]: _finite(lp) for t, lp in alt[:max(top, 1)]}
                         for alt in tops],
        "text_offset": offsets,
    }, offset


def echo_choice(choice: dict, texts: TokenTexts, echoed: EchoedPrompt, result: GenerationResult | None,
                top: int) -> None:
    """Put the prompt (text, and tokens with logprobs when asked) in front of one completion choice."""
    choice["text"] = echoed.text + choice["text"]
    if choice.get("logprobs") is None or echoed.scored is None:
        return
    generated = result.token_ids if result is not None else []
    lps = [*echoed.scored[0], *((result.logprobs or []) if result is not None else [])]
    tops = [*echoed.scored[1], *((result.top_logprobs or [[] for _ in generated]) if result is not None else [])]
    choice["logprobs"] = token_logprobs(texts, [*echoed.token_ids, *generated], lps, tops, top)[0]


class EchoRenderer(Renderer):
    """A streamed echo: prompt_chunks() first, then deltas whose logprobs list every generated token by
    its piece, at offsets that continue the prompt's (as echo_choice lists them)."""

    top = 0
    _echo_offsets: dict[int, int]

    def prompt_chunks(self, echoed: Sequence[EchoedPrompt], per_prompt: int, echo_only: bool) -> list[str]:
        """One chunk per choice index with its prompt; with max_tokens 0 it also ends the choice."""
        self._echo_offsets = {}
        chunks = []
        for p, prompt in enumerate(echoed):
            logprobs, end = None, 0
            if self.logprobs and prompt.scored is not None:
                logprobs, end = token_logprobs(self.texts, prompt.token_ids, *prompt.scored, self.top)
            for index in range(p * per_prompt, (p + 1) * per_prompt):
                self._echo_offsets[index] = end
                chunks.append(self._chunk({"index": index, "text": prompt.text, "logprobs": logprobs,
                                           "finish_reason": "length" if echo_only else None}, index))
        return chunks

    def delta_chunk(self, index: int, events: list[TokenEvent], finish_reason: str | None) -> str | None:
        if not self.logprobs:
            return super().delta_chunk(index, events, finish_reason)
        text = "".join(e.text for e in events)
        tokens = [e for e in events if e.token_id >= 0]  # every generated token, control tokens too
        if self.continuous:
            self._completion[index] = self._completion.get(index, 0) + len(tokens)
        logprobs = None
        if tokens:
            logprobs, self._echo_offsets[index] = token_logprobs(
                self.texts, [e.token_id for e in tokens], [e.logprob for e in tokens],
                [e.top_logprobs or [] for e in tokens], self.top, self._echo_offsets.get(index, 0))
        if not text and logprobs is None and finish_reason is None:
            return None
        return self._chunk({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason},
                           index)
