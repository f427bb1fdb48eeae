"""Request bodies in OpenAI's shapes (pydantic), and their translation to SamplingParams.

Pydantic checks types only; value ranges are SamplingParams.check()'s (one set of rules for the server,
the CLI and the benchmarks), plus the request-level rules OpenAI applies (top_logprobs needs logprobs,
stream_options needs stream).

Unknown top-level fields are rejected with 400 "Unrecognized request argument supplied: X" (OpenAI's and
trtllm-serve's behaviour): a typo such as `max_token` must not silently run with defaults. Fields OpenAI
defines that change nothing at their neutral value (suffix "") are accepted at that value only.
Tools, response_format, logit_bias, echo and best_of are checked and applied by server.plan. Inside a message, unknown fields are
ignored, because clients echo back whole response messages (refusal, annotations, audio: null).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trtbuild.runtime.interface import EngineInfo, SamplingParams
from trtbuild.server.errors import bad_request
from trtbuild.server.strict import Bool, Int, Number, Str, TokenIds, ranged

INT64 = 2**63


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Strict):
    include_usage: Bool | None = False
    continuous_usage_stats: Bool | None = False  # vLLM: cumulative usage in every chunk (exact tokens per chunk)


class ContentPart(Lenient):
    type: str
    text: str | None = None


class FunctionCall(Lenient):
    name: str
    arguments: str | dict[str, Any] | None = None


class ToolCall(Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionName(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"] = "function"
    function: FunctionName


class NvExt(Strict):
    """NVIDIA NIM's extension object; its guided_json is structured output as response_format json_schema."""
    guided_json: dict[str, Any] | str | None = None


class FunctionDefinition(Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        if any(part.type != "text" or part.text is None for part in self.content):
            raise bad_request("Only text content parts are supported by this model.", param="messages")
        return "".join(part.text for part in self.content)


class GenerationRequest(Strict):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    # Types are strict (trtbuild.server.strict); documented ranges are SamplingParams.check()'s.
    model: Str | None = None
    max_tokens: Int | None = Field(None, **ranged(minimum=1))
    n: Int | None = Field(1, ge=1, le=128)
    temperature: Number | None = Field(None, **ranged(minimum=0, maximum=2))
    top_p: Number | None = Field(None, **ranged(exclusiveMinimum=0, maximum=1))
    top_k: Int | None = Field(None, **ranged(minimum=-1))  # -1 (vLLM) and 0 both mean off
    seed: Int | None = Field(None, ge=-INT64, le=INT64 - 1)
    stop: Str | list[Str] | None = Field(None, **ranged(minLength=1, maxItems=16))
    stop_token_ids: TokenIds | None = None
    include_stop_str_in_output: Bool | None = False
    frequency_penalty: Number | None = Field(0.0, **ranged(minimum=-2, maximum=2))
    presence_penalty: Number | None = Field(0.0, **ranged(minimum=-2, maximum=2))
    repetition_penalty: Number | None = Field(1.0, **ranged(exclusiveMinimum=0, maximum=10))
    min_tokens: Int | None = Field(0, **ranged(minimum=0))
    ignore_eos: Bool | None = False
    stream: Bool | None = False
    stream_options: StreamOptions | None = None
    user: Str | None = None
    logit_bias: dict[Str, Number] | None = None

    # --- what the subclasses answer --------------------------------------------------------------
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprob_settings(self) -> tuple[bool, int]:
        return False, 0

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:  # as vLLM: only together with include_usage
        return self.include_usage and bool(self.stream_options.continuous_usage_stats)

    def check(self) -> None:
        """Request-level rules (beyond one field's type or range)."""
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true.", param="stream_options")
        if self.logit_bias is not None and len(self.logit_bias) > 1024:
            raise bad_request("logit_bias may hold at most 1024 tokens.", param="logit_bias")

    def sampling_params(self, prompt_len: int, info: EngineInfo, choice: int = 0) -> SamplingParams:
        """SamplingParams of one choice; raises APIError 400 for a value out of range."""
        max_tokens = self.requested_max_tokens()
        logprobs, top_logprobs = self.logprob_settings()
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        params = SamplingParams(
            # Without max_tokens a request may use the rest of the context, as in vLLM.
            max_tokens=max(info.max_seq_len - prompt_len, 1) if max_tokens is None else max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=0 if self.top_k in (None, -1) else self.top_k,
            # n independent samples: seeds seed, seed+1, ... so a seeded request is reproducible as a whole
            seed=None if self.seed is None else self.seed + choice,
            stop=stop, stop_token_ids=list(self.stop_token_ids or []),
            include_stop_str_in_output=bool(self.include_stop_str_in_output),
            frequency_penalty=_or(self.frequency_penalty, 0.0), presence_penalty=_or(self.presence_penalty, 0.0),
            repetition_penalty=_or(self.repetition_penalty, 1.0), min_tokens=_or(self.min_tokens, 0),
            ignore_eos=bool(self.ignore_eos), logprobs=logprobs, top_logprobs=top_logprobs)
        try:
            params.check()
        except ValueError as exc:
            raise bad_request(str(exc), param=str(exc).split(" ", 1)[0]) from None
        bad = [t for t in params.stop_token_ids if not 0 <= t < info.vocab_size]
        if bad:
            raise bad_request(f"stop_token_ids: {bad[0]} is outside the vocabulary [0, {info.vocab_size}).",
                              param="stop_token_ids")
        return params  # the context length is checked by the caller (trtbuild.server.guards.check_context)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(None, **ranged(minimum=1))
    logprobs: Bool | None = False
    top_logprobs: Int | None = Field(None, **ranged(minimum=0, maximum=20))
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: Bool | None = None
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None  # vLLM's and NIM's name for a JSON-schema guide
    nvext: NvExt | None = None

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens is OpenAI's newer name; it wins when both are sent.
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens

    def logprob_settings(self) -> tuple[bool, int]:
        return bool(self.logprobs), self.top_logprobs or 0

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true.", param="top_logprobs")


class CompletionRequest(GenerationRequest):
    prompt: Str | list[Str] | TokenIds | list[TokenIds]
    # OpenAI: the number of alternatives to list. `false` (some clients send it) means off, like null.
    logprobs: Int | Bool | None = Field(None, **ranged(minimum=0, maximum=20))  # OpenAI's legacy API: 5; vLLM 20
    echo: Bool | None = None
    best_of: Int | None = Field(None, **ranged(minimum=1, maximum=128))
    suffix: Str | None = None

    @field_validator("logprobs")
    @classmethod
    def _logprobs_count(cls, value):
        if value is True:
            raise ValueError("for /v1/completions logprobs is a number of alternatives (0-20), or null or false "
                             "for none; true is /v1/chat/completions' form")
        return None if value is False else value

    def logprob_settings(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    def requested_max_tokens(self) -> int | None:
        # echo with max_tokens 0 scores the prompt only (server.echo); 1 stands in for the range checks
        return 1 if self.echo and self.max_tokens == 0 else self.max_tokens

    def check(self) -> None:
        super().check()
        if self.suffix not in (None, ""):
            raise bad_request("suffix is not supported by this server.", param="suffix")

    def prompts(self) -> list[str | list[int]]:
        """One prompt or a batch of them: each a string or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise bad_request("prompt must not be empty.", param="prompt")
        if isinstance(prompt[0], int):
            return [prompt]
        if any(isinstance(p, list) and not p for p in prompt):
            raise bad_request("prompt must not contain an empty token list.", param="prompt")
        return list(prompt)


class TokenizeRequest(Strict):
    model: Str | None = None
    prompt: Str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    add_special_tokens: Bool | None = True


class DetokenizeRequest(Strict):
    model: Str | None = None
    tokens: TokenIds


def _or(value, default):
    return default if value is None else value
