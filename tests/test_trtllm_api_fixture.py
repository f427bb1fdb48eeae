"""The 1.2 API fixture (tests/fixtures/trtllm_1_2_api.json) and the contract double built on it (issue 11,
item 6): every section names its TensorRT-LLM file with a commit or index id and how near to 1.2 it is; the
errors of the older fixture stay fixed; and the double enforces the rules the fixture records (Pydantic
BuildConfig forbids unknown fields, PluginConfig assignment raises, unknown LLM keywords are refused).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from trtllm_fixtures import trtllm_double  # noqa: F401

from trtbuild import trtllm_config as tc
from trtbuild.config import load_profile

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "trtllm_1_2_api.json").read_text())
API = FIXTURE["sections"]


def test_every_section_names_file_commit_and_nearness():
    for name, section in API.items():
        source = section["source"]
        assert source.startswith(("NVIDIA/TensorRT-LLM:", "Ataraksia/TensorRT-LLM:")), name
        assert re.search(r"@[0-9a-f]{40}|index ids? \d+", source), (name, source)  # a commit or an index id
        assert re.search(r"\.py\b", source), (name, source)  # a file
        assert section["nearness_to_1_2"], name


def test_known_errors_of_the_older_fixture_stay_fixed():
    assert "auto_parallel_config" not in API["BuildConfig"]["fields"]
    assert "Pydantic" in API["BuildConfig"]["kind"]
    assert not set(API["TrtLlmArgs"]["fork_only"]) & set(API["TrtLlmArgs"]["fields"])
    assert not set(API["KvCacheConfig"]["only_in_later_copies"]) & set(API["KvCacheConfig"]["fields"])
    assert "FP8" in API["QuantAlgo"]["verified_by_use"] and "W4A8_MXFP4_FP8" in API["QuantAlgo"]["unverified"]
    assert all(flag.startswith("--") for flag in API["trtllm-serve"]["flags"])
    assert "raises" in API["PluginConfig"]["note"] and API["PluginConfig"]["model_config"]["validate_assignment"]
    # what trtbuild hands TensorRT-LLM uses only names that are not in doubt
    assert set(API["TrtLlmArgs"]["used_by_trtbuild"]) <= set(API["TrtLlmArgs"]["fields"])
    assert set(API["BuildConfig"]["used_by_trtbuild"]) <= set(API["BuildConfig"]["fields"])


def test_double_builds_pydantic_build_config_and_refuses_unknown_names(trtllm_double):
    from pydantic import ValidationError
    from tensorrt_llm import BuildConfig

    for settings in load_profile("h100-mistral-7b").variants.values():
        build = dict(tc.build_config(settings))
        plugins = build.pop("plugin_config")
        config = BuildConfig(**build)  # every name trtbuild sends is a field
        for name, value in plugins.items():
            setattr(config.plugin_config, name, value)  # validated on assignment
        assert config.to_dict()["plugin_config"]["use_paged_context_fmha"] is True
    with pytest.raises(ValidationError):
        BuildConfig(auto_parallel_config={})  # gone in 1.2: extra fields are forbidden
    config = BuildConfig()
    with pytest.raises(ValueError):
        config.plugin_config.use_paged_context_fhma = True  # a typo raises on assignment...
    with pytest.raises(ValidationError):
        config.plugin_config.gemm_plugin = "fp16"  # ...and so does a value outside the Literal
    from tensorrt_llm.plugin import PluginConfig

    assert not hasattr(PluginConfig(use_paged_context_fhma=True), "use_paged_context_fhma")  # the constructor drops it


def test_double_llm_refuses_fork_only_and_unknown_keywords(trtllm_double, tmp_path):
    from tensorrt_llm._tensorrt_engine import LLM
    from tensorrt_llm.llmapi import KvCacheConfig

    for name in ("env_overrides", "no_such_option"):
        with pytest.raises(ValueError, match=f"got invalid argument: {name}"):
            LLM(model=str(tmp_path), **{name: None})
    with pytest.raises(Exception):
        KvCacheConfig(use_kv_cache_manager_v2=True)  # StrictBaseModel: not a 1.2.0 field
    with pytest.raises(Exception):
        KvCacheConfig(free_gpu_memory_fraction=1.5)


def test_the_double_is_never_used_outside_tests():
    root = Path(__file__).resolve().parents[1]
    for path in [*(root / "trtbuild").rglob("*.py"), *(root / "bench").rglob("*.py")]:
        text = path.read_text()
        assert "trtllm_double" not in text and "IS_TEST_DOUBLE" not in text, path
    readme = (Path(__file__).parent / "trtllm_double" / "README.md").read_text()
    assert "not TensorRT-LLM" in readme and "no TensorRT engine" in readme
