"""TEST DOUBLE of PluginConfig (tensorrt_llm/plugin/plugin.py@c20322ffd3dc0740ca530c9fad989b22e64f6e06).

What it mirrors: a Pydantic model with ConfigDict(validate_assignment=True, extra="ignore"): the constructor
drops unknown names silently, assignment of an unknown name raises, assignment of a value outside a field's
Literal choices raises. Field names and choices come from tests/fixtures/trtllm_1_2_api.json (read from
that plugin.py); defaults of the fields trtbuild relies on are the ones in plugin.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, create_model

_API = json.loads((Path(__file__).parents[2] / "fixtures" / "trtllm_1_2_api.json").read_text())["sections"]
_SECTION = _API["PluginConfig"]
DEFAULTS = {"dtype": "float16", "gpt_attention_plugin": "auto", "bert_attention_plugin": "auto",
            "nccl_plugin": "auto", "gemm_plugin": None, "context_fmha": True, "remove_input_padding": True,
            "use_paged_context_fmha": True, "use_fp8_context_fmha": True, "tokens_per_block": 32,
            "paged_kv_cache": None, "multiple_profiles": False}


def _field(name: str):
    if name in _SECTION["allowed_values"]:
        choices = tuple(_SECTION["allowed_values"][name])
        return Literal[choices], DEFAULTS.get(name)  # type: ignore[valid-type]
    if name in _SECTION["int_fields"]:
        return int, DEFAULTS.get(name, 32)
    if name == "dtype":
        return str, DEFAULTS["dtype"]
    return Optional[bool], DEFAULTS.get(name, False)


class _Base(BaseModel):
    model_config = ConfigDict(validate_assignment=True, extra="ignore")

    def to_dict(self) -> dict:
        return self.model_dump()


PluginConfig = create_model("PluginConfig", __base__=_Base, **{name: _field(name) for name in _SECTION["fields"]})
