"""Request bodies in OpenAI's shapes (pydantic), and their translation to SamplingParams.

Pydantic checks types only; value ranges are SamplingParams.check()'s (one set of rules for the server,
the CLI and the benchmarks), plus the request-level rules OpenAI applies (top_logprobs needs logprobs,
stream_options needs stream).

Unknown top-level fields are rejected with 400 "Unrecognized request argument supplied: X" (OpenAI's and
trtllm-serve's behaviour): a typo such as `max_token` must not silently run with defaults. Fields OpenAI
defines that change nothing at their neutral value (logit_bias {}, response_format text, tool_choice
auto/none, echo false...) are accepted at that value only. Inside a message, unknown fields are
ignored, because clients echo back whole response messages (refusal, annotations, audio: null).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trtbuild.runtime.interface import ContextLengthExceeded, EngineInfo, SamplingParams
from trtbuild.server.errors import bad_request

INT64 = 2**63


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Strict):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False  # vLLM: cumulative usage in every chunk (exact tokens per chunk)


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

    model: str | None = None
    max_tokens: int | None = None
    n: int | None = Field(1, ge=1, le=128)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # -1 (vLLM) and 0 both mean off
    seed: int | None = Field(None, ge=-INT64, le=INT64 - 1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = False
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    repetition_penalty: float | None = 1.0
    min_tokens: int | None = 0
    ignore_eos: bool | None = False
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None

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
        if self.logit_bias:
            raise bad_request("logit_bias is not supported by this server.", param="logit_bias")

    def sampling_params(self, prompt_len: int, info: EngineInfo, choice: int = 0) -> SamplingParams:
        """SamplingParams of one choice; raises APIError 400 (bad range) or ContextLengthExceeded."""
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
        if max_tokens is not None and prompt_len + max_tokens > info.max_seq_len:
            raise ContextLengthExceeded(prompt_len, max_tokens, info.max_seq_len, info.max_input_len)
        return params


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens is OpenAI's newer name; it wins when both are sent.
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens

    def logprob_settings(self) -> tuple[bool, int]:
        return bool(self.logprobs), self.top_logprobs or 0

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true.", param="top_logprobs")
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise bad_request("Only response_format {\"type\": \"text\"} is supported.", param="response_format")


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    def logprob_settings(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    def check(self) -> None:
        super().check()
        for name, neutral in (("echo", (None, False)), ("best_of", (None, 1)), ("suffix", (None, ""))):
            if getattr(self, name) not in neutral:
                raise bad_request(f"{name} is not supported by this server.", param=name)

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
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    add_special_tokens: bool | None = True


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int]


def _or(value, default):
    return default if value is None else value
