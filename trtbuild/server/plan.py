"""What a request asks beyond plain generation, decided once before anything runs: tools and tool_choice
(server.tools), response_format (server.structured), logit_bias, echo (server.echo) and best_of.

generate.py asks the plan how many sequences to run per prompt, lets it adjust each SamplingParams,
builds the renderer it picks, and hands it the results to finish the response.

best_of (completions), as vLLM does it: run best_of sequences per prompt and return the n with the
highest cumulative logprob; not with stream unless best_of == n (OpenAI's rule too).
echo with stream: echo_chunks() are the first SSE chunks (server.echo).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from trtbuild.runtime.interface import Engine, EngineInfo, GenerationResult, RequestStream, SamplingParams
from trtbuild.server.echo import EchoRenderer, check_can_score, echo_choice, echoed_prompts
from trtbuild.server.errors import bad_request
from trtbuild.server.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from trtbuild.server.render import Renderer
from trtbuild.server.structured import check_schema, guided_json_guide, response_format_guide
from trtbuild.server.tools import ToolPlan, ToolRenderer


class RequestPlan:
    def __init__(self, body: GenerationRequest, vocab_size: int, info: EngineInfo | None = None):
        self.body = body
        self.n = body.n or 1
        self.sequences = self.n  # per prompt
        self.tools: ToolPlan | None = None
        self.guide: dict | None = None
        self.logit_bias = logit_bias(body.logit_bias, vocab_size)
        self.echo = False
        if isinstance(body, ChatCompletionRequest):
            self.tools = ToolPlan(body.tools, body.tool_choice, body.parallel_tool_calls)
            self.guide = response_format_guide(body.response_format)
            for param, schema in (("guided_json", body.guided_json),
                                  ("nvext", body.nvext.guided_json if body.nvext else None)):
                extra = guided_json_guide(schema, param)
                if extra is not None:
                    if self.guide is not None:
                        raise bad_request("Send one of response_format, guided_json, nvext.guided_json.", param=param)
                    self.guide = extra
            tool_guide = self.tools.guide()
            if tool_guide is not None:
                if self.guide is not None:
                    raise bad_request("response_format cannot be combined with a tool_choice that forces a call.",
                                      param="response_format")
                check_schema(tool_guide, "tools")
                self.guide = tool_guide
            for token, bias in self.tools.logit_bias().items():
                self.logit_bias.setdefault(token, bias)
        elif isinstance(body, CompletionRequest):
            self.echo = bool(body.echo)
            if body.best_of is not None:
                if body.best_of < self.n:
                    raise bad_request(f"best_of must be >= n ({self.n}), got {body.best_of}.", param="best_of")
                if body.stream and body.best_of != self.n:
                    raise bad_request("best_of must equal n when streaming.", param="best_of")
                self.sequences = body.best_of
            if self.echo and body.logprob_settings()[0] and info is not None:
                check_can_score(info)  # before anything runs, not after the generation

    @property
    def echo_only(self) -> bool:
        """echo with max_tokens 0: score the prompt, generate nothing."""
        return self.echo and self.body.max_tokens == 0

    def adjust(self, params: SamplingParams) -> SamplingParams:
        params.guided = self.guide
        params.logit_bias = dict(self.logit_bias)
        if self.sequences > self.n:
            params.logprobs = True  # best_of ranks by cumulative logprob
        return params

    @property
    def echo_stream(self) -> bool:
        return self.echo and bool(self.body.stream)

    def renderer(self, *args) -> Renderer:
        if self.tools is not None and self.tools.active:
            return ToolRenderer(self.tools, *args)
        if self.echo_stream:
            renderer = EchoRenderer(*args)
            renderer.top = self.body.logprob_settings()[1]
            return renderer
        return Renderer(*args)

    async def echo_chunks(self, engine: Engine, renderer: Renderer, prompts: Sequence[list[int]]) -> list[str]:
        """A streamed echo's first chunks: each choice's prompt (scored off the event loop when logprobs
        are asked for), sent before any generated delta."""
        assert isinstance(renderer, EchoRenderer)
        echoed = await echoed_prompts(engine, self.body, prompts)
        return renderer.prompt_chunks(echoed, self.n, self.echo_only)

    async def response(self, engine: Engine, renderer: Renderer, prompts: Sequence[list[int]],
                       results: Sequence[GenerationResult], prompt_tokens: int,
                       streams: Sequence[RequestStream] | None = None) -> dict:
        """The non-streamed body: best_of selection, rendering, echo. `streams` (one per result, in order)
        let logprob tokens spell the text exactly; best_of reorders results, so it renders without them."""
        if self.sequences > self.n:
            results, streams = best_n(results, self.sequences, self.n), None
        if self.echo_only:
            results = [GenerationResult(request_id="", prompt_token_ids=list(p), token_ids=[], text="",
                                        finish_reason="length", logprobs=[], top_logprobs=[])
                       for p in prompts for _ in range(self.n)]
        body = renderer.response(results, prompt_tokens, streams)
        if self.echo:
            top = self.body.logprob_settings()[1]
            for p, echoed in enumerate(await echoed_prompts(engine, self.body, prompts)):
                for c in range(p * self.n, (p + 1) * self.n):
                    echo_choice(body["choices"][c], renderer.texts, echoed, None if self.echo_only else results[c], top)
        return body


def best_n(results: Sequence[GenerationResult], per_prompt: int, n: int) -> list[GenerationResult]:
    """Of each prompt's `per_prompt` results, the n with the highest cumulative logprob, best first."""
    chosen = []
    for start in range(0, len(results), per_prompt):
        group = sorted(results[start:start + per_prompt], key=lambda r: -sum(r.logprobs or [0.0]))
        chosen.extend(dataclasses.replace(r) for r in group[:n])
    return chosen


def logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """OpenAI's logit_bias {"token id": bias in [-100, 100]} -> {int: float}; a 400 for a bad entry."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < vocab_size:
            raise bad_request(f"logit_bias keys must be token ids in [0, {vocab_size}), got {str(key)[:40]!r}.",
                              param="logit_bias")
        if not -100 <= value <= 100:  # NaN fails this too
            raise bad_request(f"logit_bias values must be in [-100, 100], got {value} for token {token}.",
                              param="logit_bias")
        out[token] = float(value)
    return out
