"""Everything trtbuild hands TensorRT-LLM, checked name by name against the 1.2 API fixture.

tests/fixtures/trtllm_1_2_api.json holds the field and flag names read from TensorRT-LLM's source
(each section names its file and commit). PluginConfig's constructor silently ignores unknown names and the
CLIs reject them only on a GPU machine, so these checks are the first guard against a typo here.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import types
from pathlib import Path

import pytest

from trtbuild import trtllm_backend, trtllm_config as tc
from trtbuild.config import BUILTIN_PROFILES, load_profile, parse_profile
from trtbuild.errors import TrtbuildError

API = json.loads((Path(__file__).parent / "fixtures" / "trtllm_1_2_api.json").read_text())["sections"]
VARIANTS = [(p, v) for p in BUILTIN_PROFILES for v in load_profile(p).variants]


@pytest.fixture(params=VARIANTS, ids=[f"{p}-{v}" for p, v in VARIANTS])
def settings(request):
    profile, variant = request.param
    return load_profile(profile).variants[variant]


def fields(section: str) -> set[str]:
    return set(API[section]["fields"])


def check_plugin_values(plugins: dict) -> None:
    allowed = API["PluginConfig"]["allowed_values"]
    for name, value in plugins.items():
        if name in allowed:
            assert value in allowed[name], (name, value)
        elif name in API["PluginConfig"]["int_fields"]:
            assert isinstance(value, int) and not isinstance(value, bool), (name, value)
        else:
            assert name in API["PluginConfig"]["bool_fields"] and isinstance(value, bool), (name, value)


def parse_argv(argv: list[str], program_tokens: int) -> dict[str, str | None]:
    """--flag value pairs (value None for a bare switch)."""
    flags, rest = {}, argv[program_tokens:]
    for i, token in enumerate(rest):
        if token.startswith("--"):
            following = rest[i + 1] if i + 1 < len(rest) else None
            flags[token] = None if following is None or following.startswith("--") else following
        else:
            assert i > 0 and rest[i - 1].startswith("--"), f"stray argument {token!r}"
    return flags


def check_flags(flags: dict, section: str) -> None:
    known, choices = set(API[section]["flags"]), API[section]["choices"]
    assert set(flags) <= known, f"{section}: unknown flags {set(flags) - known}"
    for flag, value in flags.items():
        if flag in choices:
            assert value in [str(c) for c in choices[flag] if c is not None], (flag, value)


# --- every emitted name, every variant of both builtin profiles -----------------------------------

def test_build_config_names_and_values(settings):
    config = tc.build_config(settings)
    assert set(config) <= fields("BuildConfig")
    assert set(config["plugin_config"]) <= fields("PluginConfig")
    check_plugin_values(config["plugin_config"])
    assert config["max_seq_len"] == settings.max_seq_len and config["strongly_typed"] is True


def test_quant_and_calib_config_names_and_values(settings):
    quant = tc.quant_config(settings)
    if not settings.is_fp8:
        assert quant is None
        return
    assert set(quant) <= fields("QuantConfig")
    assert quant["quant_algo"] in API["QuantAlgo"]["members"]
    if quant["kv_cache_quant_algo"] is not None:
        assert quant["kv_cache_quant_algo"] in API["QuantAlgo"]["KV_CACHE_QUANT_ALGO_LIST"]
    calib = tc.calib_config(settings)
    assert set(calib) == fields("CalibConfig")  # every field set explicitly
    assert calib["device"] in API["CalibConfig"]["allowed_values"]["device"]


def test_llm_args_names(settings, tmp_path):
    args = tc.llm_args(settings, tmp_path)
    assert set(args) <= fields("TrtLlmArgs") and args["model"] == str(tmp_path)
    assert ("quant_config" in args) == ("calib_config" in args) == settings.is_fp8
    json.dumps(tc.trtllm_summary(settings, tmp_path))  # recorded in manifests: must be plain JSON


def test_cli_route_flags(settings, tmp_path):
    checkpoint_argv, build_argv = tc.cli_route(settings, tmp_path / "hf", tmp_path)
    assert build_argv[0] == "trtllm-build"
    check_flags(parse_argv(build_argv, 1), "trtllm-build")
    section = "quantize.py" if settings.is_fp8 else "convert_checkpoint.py (llama)"
    check_flags(parse_argv(checkpoint_argv, 2), section)
    # the checkpoint the first command writes is the one the second reads
    assert parse_argv(checkpoint_argv, 2)["--output_dir"] == parse_argv(build_argv, 1)["--checkpoint_dir"]


def test_kv_cache_config_names():
    assert set(tc.kv_cache_config(0.85)) <= fields("KvCacheConfig")
    with pytest.raises(TrtbuildError, match="free_gpu_memory_fraction"):
        tc.kv_cache_config(1.5)


def test_module_tables_match_the_fixture():
    assert tc.PLUGIN_FIELDS == fields("PluginConfig")
    assert tc.CLI_PLUGIN_ARGS == set(API["PluginConfig"]["cli_plugin_args"])
    assert {f"--{name}" for name in tc.CLI_PLUGIN_ARGS} <= set(API["trtllm-build"]["flags"])
    for name, values in tc.PLUGIN_CHOICES.items():
        assert set(values) <= set(API["PluginConfig"]["allowed_values"][name]), name
    assert tc.PLUGIN_BOOL_FIELDS == set(API["PluginConfig"]["bool_fields"]) | {"paged_kv_cache"}


# --- the values themselves -------------------------------------------------------------------------

def test_h100_profile_values(tmp_path):
    variants = load_profile("h100-mistral-7b").variants
    fp16, fp8, kv8 = (tc.build_config(variants[v]) for v in ("fp16", "fp8", "fp8-kv8"))
    assert fp16["plugin_config"]["gemm_plugin"] == "auto"
    assert fp16["plugin_config"]["use_fp8_context_fmha"] is False
    # FP8 context FMHA only where TensorRT-LLM keeps it: with an FP8 KV cache (builder.py build())
    assert fp8["plugin_config"]["gemm_plugin"] is None and fp8["plugin_config"]["use_fp8_context_fmha"] is False
    assert kv8["plugin_config"]["use_fp8_context_fmha"] is True
    for config in (fp16, fp8, kv8):
        assert config["plugin_config"]["use_paged_context_fmha"] is True
        assert config["plugin_config"]["multiple_profiles"] is True
        assert (config["max_batch_size"], config["max_input_len"], config["max_seq_len"],
                config["max_num_tokens"]) == (128, 2048, 4096, 8192)
    assert tc.quant_config(variants["fp8"]) == {"quant_algo": "FP8", "kv_cache_quant_algo": None}
    assert tc.quant_config(variants["fp8-kv8"])["kv_cache_quant_algo"] == "FP8"
    assert tc.calib_config(variants["fp8"]) == {
        "device": "cuda", "calib_dataset": "cnn_dailymail", "calib_batches": 512, "calib_batch_size": 1,
        "calib_max_seq_length": 512, "random_seed": 1234, "tokenizer_max_seq_length": 2048}

    build = parse_argv(tc.trtllm_build_argv(variants["fp8-kv8"], "ckpt", "out"), 1)
    assert build["--gemm_plugin"] == "disable" and build["--use_fp8_context_fmha"] == "enable"
    assert build["--multiple_profiles"] == "enable" and build["--max_num_tokens"] == "8192"
    quantize = parse_argv(tc.quantize_py_argv(variants["fp8-kv8"], "hf", "ckpt"), 2)
    assert quantize["--qformat"] == "fp8" and quantize["--kv_cache_dtype"] == "fp8"
    assert quantize["--calib_size"] == "512" and quantize["--dtype"] == "float16"
    assert "--kv_cache_dtype" not in parse_argv(tc.quantize_py_argv(variants["fp8"], "hf", "ckpt"), 2)


def test_calib_config_takes_the_resolved_dataset():
    settings = load_profile("cpu-tiny").variants["fp8"]
    assert settings.calibration.dataset == "builtin"
    assert tc.calib_config(settings)["calib_dataset"] == "builtin"  # as written, before prepare_calibration
    assert tc.calib_config(settings, "/ws/tmp/x.trtllm/calibration-dataset")["calib_dataset"].endswith("dataset")
    with pytest.raises(TrtbuildError, match="only FP8 variants calibrate"):
        tc.calib_config(load_profile("cpu-tiny").variants["fp16"])


def test_build_only_llm_gets_a_workspace_and_a_small_kv_cache(tmp_path):
    settings = load_profile("h100-mistral-7b").variants["fp8"]
    args = tc.llm_args(settings, "/hf", workspace=tmp_path / "llm-workspace", calib_dataset="/ws/calib")
    assert args["workspace"] == str(tmp_path / "llm-workspace") and args["calib_config"]["calib_dataset"] == "/ws/calib"
    assert set(args["kv_cache_config"]) <= fields("KvCacheConfig")
    # one max_seq_len sequence, at most 5% of free memory, instead of 90% of it (KvCacheConfig's default)
    assert args["kv_cache_config"] == {"free_gpu_memory_fraction": 0.05, "max_tokens": 4096,
                                       "enable_block_reuse": False}
    assert args["build_config"]["gather_context_logits"] is True  # every engine can be scored


def test_profile_plugins_override_defaults_and_disable_maps_to_none():
    raw = {"build": {"plugins": {"gemm_plugin": "auto", "tokens_per_block": 64}},
           "variants": {"fp8": {"plugins": {"gemm_plugin": "disable", "low_latency_gemm_plugin": "fp8"}}}}
    settings = parse_profile(raw).variants["fp8"]
    plugins = tc.plugin_config(settings)
    assert plugins["gemm_plugin"] is None and plugins["low_latency_gemm_plugin"] == "fp8"
    assert plugins["tokens_per_block"] == 64
    check_plugin_values(plugins)


@pytest.mark.parametrize("plugins, message", [
    ({"use_paged_context_fhma": True}, r"unknown TensorRT-LLM plugin option\(s\) \['use_paged_context_fhma'\]"),
    ({"gemm_plugin": "fp16"}, r"plugins.gemm_plugin = 'fp16' is not valid; use 'auto', 'float16'"),
    ({"multiple_profiles": "yes"}, r"plugins.multiple_profiles = 'yes' is not valid; use true or false"),
    ({"tokens_per_block": 0}, r"plugins.tokens_per_block = 0 is not valid; use a positive integer"),
])
def test_bad_plugin_options_are_one_line_errors(plugins, message):
    with pytest.raises(TrtbuildError, match=message) as info:
        parse_profile({"build": {"plugins": plugins}}, source="my.toml")
    assert "\n" not in str(info.value) and str(info.value).startswith("my.toml: variants.")


# --- the adapter: lazy import, one-line errors, real objects from the dicts ------------------------

def test_missing_or_wrong_tensorrt_llm_is_one_line():
    with pytest.raises(TrtbuildError, match=r"^tensorrt_llm is not installed: install it from NVIDIA's index"):
        trtllm_backend.check_version(None)
    with pytest.raises(TrtbuildError, match=r"tensorrt_llm 1\.1\.0 is installed but .* targets 1\.2\.x"):
        trtllm_backend.check_version("1.1.0")
    with pytest.raises(TrtbuildError, match=r"tensorrt_llm 1\.20\.0 is installed"):
        trtllm_backend.check_version("1.20.0")
    trtllm_backend.check_version("1.2.1")
    trtllm_backend.check_version("1.2.0rc7")


def test_require_trtllm_here():
    if trtllm_backend.installed_version() is not None:
        pytest.skip("tensorrt_llm is installed on this machine; the missing-package path cannot occur")
    with pytest.raises(TrtbuildError, match="^tensorrt_llm is not installed") as info:
        trtllm_backend.require_trtllm()
    assert "--backend torch" in str(info.value) and not trtllm_backend.available()


@pytest.fixture
def recording_tensorrt_llm(monkeypatch):
    """tensorrt_llm's build-side classes, reduced to recorders that accept only the fixture's names."""
    calls = {}

    def strict(section):
        class Strict:
            def __init__(self, **kwargs):
                unknown = set(kwargs) - fields(section)
                assert not unknown, f"{section} got unknown {unknown}"
                self.__dict__.update(kwargs)
                calls.setdefault(section, []).append(kwargs)
        return Strict

    class PluginConfig:
        def __setattr__(self, name, value):
            assert name in fields("PluginConfig"), name
            calls.setdefault("plugins", {})[name] = value

    class BuildConfig(strict("BuildConfig")):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.plugin_config = PluginConfig()

    class LLM(strict("TrtLlmArgs")):
        def save(self, path):
            calls["saved"] = path

        def shutdown(self):
            calls["shutdown"] = "saved" in calls

    quant_algo = enum.Enum("QuantAlgo", API["QuantAlgo"]["members"])
    modules = {
        "tensorrt_llm": types.SimpleNamespace(BuildConfig=BuildConfig),
        "tensorrt_llm._tensorrt_engine": types.SimpleNamespace(LLM=LLM),
        "tensorrt_llm.llmapi": types.SimpleNamespace(QuantConfig=strict("QuantConfig"), QuantAlgo=quant_algo,
                                                     CalibConfig=strict("CalibConfig"),
                                                     KvCacheConfig=strict("KvCacheConfig")),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls, quant_algo


def test_adapter_builds_real_objects_from_the_dicts(recording_tensorrt_llm, tmp_path):
    calls, quant_algo = recording_tensorrt_llm
    settings = load_profile("h100-mistral-7b").variants["fp8-kv8"]
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings.to_dict()))
    assert trtllm_backend.main(["build", "--settings", str(settings_file), "--model", "/hf", "--out", "/eng",
                                "--workspace", "/ws/llm", "--calib-dataset", "/ws/calib"]) == 0

    expected = tc.build_config(settings)
    assert calls["plugins"] == expected.pop("plugin_config")
    assert calls["BuildConfig"] == [expected]
    (quant,) = calls["QuantConfig"]
    assert quant["quant_algo"] is quant_algo.FP8 and quant["kv_cache_quant_algo"] is quant_algo.FP8
    assert calls["CalibConfig"] == [tc.calib_config(settings, "/ws/calib")]
    assert calls["KvCacheConfig"] == [tc.build_kv_cache_config(settings)]
    (llm,) = calls["TrtLlmArgs"]
    assert (llm["model"], llm["dtype"], llm["tensor_parallel_size"]) == ("/hf", "float16", 1)
    assert llm["workspace"] == "/ws/llm"
    assert calls["saved"] == "/eng" and calls["shutdown"] is True  # saved, then shut down


def test_settings_round_trip_through_the_child_process_file(tmp_path):
    settings = load_profile("h100-mistral-7b").variants["fp8"]
    from trtbuild.config import BuildSettings

    again = BuildSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert dataclasses.asdict(again) == dataclasses.asdict(settings)
