"""TEST DOUBLE of SamplingParams (tensorrt_llm/sampling_params.py@a98a9061d72f6fd39f5d055ebdd2c6878a100e2c).

What it mirrors: `@dataclass(slots=True, kw_only=True)`, so an unknown keyword is a TypeError; the field
names are the fixture's (read from that file); the defaults trtbuild depends on (max_tokens 32, end_id None,
detokenize True, include_stop_str_in_output False, ...); `_validate` (top_k >= 0, 0 <= top_p <= 1,
temperature >= 0) run in __post_init__; greedy when none of temperature/top_k/top_p is given, or top_k == 1,
top_p == 0 or temperature == 0 (params_imply_greedy_decoding).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

_NAMES = json.loads((Path(__file__).parents[2] / "fixtures" / "trtllm_1_2_api.json").read_text()
                    )["sections"]["SamplingParams"]["fields"]
DEFAULTS = {"max_tokens": 32, "n": 1, "detokenize": True, "include_stop_str_in_output": False, "ignore_eos": False,
            "min_tokens": None, "return_context_logits": False, "return_generation_logits": False,
            "use_beam_search": False, "skip_special_tokens": True, "add_special_tokens": True}


def _post_init(self) -> None:
    if self.top_k is not None and self.top_k < 0:
        raise ValueError(f"require top_k >= 0, got {self.top_k}")
    if self.top_p is not None and not 0 <= self.top_p <= 1:
        raise ValueError(f"require 0 <= top_p <= 1, got {self.top_p}")
    if self.temperature is not None and self.temperature < 0:
        raise ValueError(f"require temperature >= 0, got {self.temperature}")
    if self.best_of is None:
        self.best_of = self.n


def greedy(self) -> bool:
    if self.temperature is None and self.top_k is None and self.top_p is None:
        return True
    return self.top_k == 1 or self.top_p == 0 or self.temperature == 0


SamplingParams = dataclasses.make_dataclass(
    "SamplingParams", [(name, object, dataclasses.field(default=DEFAULTS.get(name))) for name in _NAMES],
    namespace={"__post_init__": _post_init, "params_imply_greedy_decoding": greedy}, slots=True, kw_only=True)


@dataclasses.dataclass(slots=True, kw_only=True)
class GuidedDecodingParams:
    """GuidedDecodingParams (same file and commit): one guide of json (a schema: str, dict or pydantic model),
    regex, grammar (EBNF), json_object, structural_tag; _validate() raises for more than one."""

    json: object = None
    regex: object = None
    grammar: object = None
    json_object: bool = False
    structural_tag: object = None

    def _validate(self) -> None:
        count = sum(bool(getattr(self, f.name)) for f in dataclasses.fields(self))
        if count > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {count}.")
