"""/v1/completions `echo`: the prompt comes back in front of the completion, with its logprobs when asked.

This is how accuracy tools score text (lm-evaluation-harness `local-completions`: prompt as token ids,
`echo: true, logprobs: 1, max_tokens: 1`, then the logprobs of the continuation's tokens are read from
the echoed prompt). As in OpenAI's legacy API and vLLM: the first prompt token has no logprob (null, and
null top_logprobs); `max_tokens: 0` with echo scores the prompt and generates nothing.

Prompt logprobs come from Engine.score (teacher-forced, one forward over the prompt, off the event loop).
An engine that cannot score (TensorRT-LLM engines built without gather_context_logits) answers echo with
logprobs with a 400 that says so; echo without logprobs works everywhere.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from trtbuild.runtime.interface import Engine, GenerationResult
from trtbuild.server.errors import bad_request
from trtbuild.server.render import TokenTexts, _finite

PromptLogprobs = tuple[list[float | None], list[list[tuple[int, float]] | None]]


async def prompt_logprobs(engine: Engine, prompt_ids: Sequence[int], top: int) -> PromptLogprobs:
    """(logprob of each prompt token given the ones before it, its `top` alternatives); None first."""
    if not engine.info.can_score:
        raise bad_request(f"echo with logprobs needs prompt logprobs, which the {engine.info.backend} engine "
                          f"{engine.info.name} cannot compute (TensorRT-LLM engines need gather_context_logits); "
                          "send echo without logprobs.", param="echo")
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


def echo_choice(choice: dict, texts: TokenTexts, prompt_text: str, prompt_ids: Sequence[int],
                scored: PromptLogprobs | None, result: GenerationResult | None, top: int) -> None:
    """Put the prompt (text, and tokens with logprobs when asked) in front of one completion choice."""
    choice["text"] = prompt_text + choice["text"]
    if choice.get("logprobs") is None or scored is None:
        return
    generated = result.token_ids if result is not None else []
    token_ids = [*prompt_ids, *generated]
    lps = [*scored[0], *(result.logprobs or [] if result is not None else [])]
    tops = [*scored[1], *((result.top_logprobs or [[] for _ in generated]) if result is not None else [])]
    tokens, offsets, offset = [], [], 0
    for token_id in token_ids:
        text = texts(token_id)[0]
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    choice["logprobs"] = {
        "tokens": tokens,
        "token_logprobs": [None if lp is None else _finite(lp) for lp in lps],
        "top_logprobs": [None if alt is None else {texts(t)[0]: _finite(lp) for t, lp in alt[:max(top, 1)]}
                         for alt in tops],
        "text_offset": offsets,
    }
