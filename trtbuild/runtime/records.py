"""What a generation request asks and what comes back: sampling parameters, token events, timings,
results and an engine's description, each a dataclass with a JSON round trip (to_dict / from_dict).
trtbuild.runtime.interface re-exports them beside RequestStream and Engine."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from trtbuild.errors import clip

FINISH_REASONS = ("stop", "length", "abort", "error")


class JSONMixin:
    __slots__ = ()  # lets a slotted dataclass (TokenEvent: one per token) stay without a __dict__

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SamplingParams(JSONMixin):
    """What a caller may ask of one generation (OpenAI's names; vLLM's extensions)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: bool = False  # logprob of each generated token
    top_logprobs: int = 0  # and the k most likely alternatives at each position
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (OpenAI)
    guided: dict | None = None  # a grammar the output must follow (trtbuild.runtime.guided)
    # The hook for structured output: callables f(output_ids, logits_row) -> logits_row that the torch
    # sampler applies to this request's row after penalties, before sampling. Not part of the JSON form.
    logits_processors: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self):
        self.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}  # JSON keys are strings

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "logits_processors"}
        return {**data, "stop": list(self.stop), "stop_token_ids": list(self.stop_token_ids),
                "logit_bias": dict(self.logit_bias)}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field (OpenAI's ranges)."""
        rules = [
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("temperature", 0 <= self.temperature <= 2 and math.isfinite(self.temperature), "must be in [0, 2]"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("repetition_penalty", 0 < self.repetition_penalty <= 10, "must be in (0, 10]"),
            ("min_tokens", 0 <= self.min_tokens <= self.max_tokens, "must be in [0, max_tokens]"),
            ("top_logprobs", 0 <= self.top_logprobs <= 20, "must be in [0, 20]"),
            ("logit_bias", all(-100 <= v <= 100 for v in self.logit_bias.values()), "values must be in [-100, 100]"),
            ("stop", len(self.stop) <= 16 and all(isinstance(s, str) and s for s in self.stop),
             "must be at most 16 non-empty strings"),
            ("guided", self.guided is None or self.guided.get("type") in ("json_object", "json_schema", "tool_calls"),
             "must be a json_object, json_schema or tool_calls guide"),
        ]
        for name, ok, why in rules:
            if not ok:
                raise ValueError(f"{name} {why}, got {clip(getattr(self, name))}")


@dataclass(slots=True)
class TokenEvent(JSONMixin):
    """One generated token, as the caller sees it while streaming."""

    token_id: int
    index: int  # position among the generated tokens
    text: str  # text this token released (may be "" while a stop-string prefix is held back)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # set on the last event only
    time_ns: int = 0  # perf_counter_ns when the engine produced the token


@dataclass
class RequestTimings(JSONMixin):
    """perf_counter_ns stamps: submitted, first scheduled into a batch, first token, finished."""

    arrival_ns: int = 0
    scheduled_ns: int = 0
    first_token_ns: int = 0
    finished_ns: int = 0

    @property
    def queue_s(self) -> float:
        return max(self.scheduled_ns - self.arrival_ns, 0) / 1e9


@dataclass
class GenerationResult(JSONMixin):
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    timings: RequestTimings = field(default_factory=RequestTimings)
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> GenerationResult:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["timings"] = RequestTimings.from_dict(data.get("timings") or {})
        return cls(**data)


@dataclass
class EngineInfo(JSONMixin):
    name: str  # shown as the model id by the server
    variant: str  # fp16 | fp8 | fp8-kv8 | reference
    backend: str  # torch | tensorrt-llm | transformers (reference)
    model_id: str
    max_seq_len: int
    max_batch_size: int
    max_input_len: int
    vocab_size: int
    eos_id: int
    precision: dict = field(default_factory=dict)
    engine_dir: str = ""
    can_score: bool = False  # Engine.score (teacher-forced log-probabilities) is available


class EngineError(RuntimeError):
    """The engine failed while running (a request's error, or the whole engine died)."""
