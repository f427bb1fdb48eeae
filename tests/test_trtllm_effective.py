"""What TensorRT-LLM's build makes of trtbuild's request (trtbuild.trtllm_effective), and the calibration
inputs checked before a build (trtbuild.trtllm_calib). The rules are builder.py build()'s (index id
205252225); the double in tests/trtllm_double applies its own copy of them at build time, and
tests/test_trtllm_double.py checks that the two agree on every builtin variant.
"""

from __future__ import annotations

import json

import pytest

from trtbuild import trtllm_config as tc
from trtbuild.config import load_profile
from trtbuild.errors import TrtbuildError
from trtbuild.trtllm_calib import CALIB_FILE, calibration_kind, prepare_calibration, write_calib_dir
from trtbuild.trtllm_effective import (can_score, effective_settings, predicted_effective, predicted_plugin_config,
                                       requested_settings, setting_changes)

PAGED = {"context_fmha": True, "use_paged_context_fmha": True}


@pytest.mark.parametrize("requested, quant, kv, sm, expected", [
    # fp8 weights, fp16 KV cache: FP8 context FMHA goes off ("must be used together with fp8 KV Cache")
    ({**PAGED, "use_fp8_context_fmha": True}, "FP8", None, 90, {"use_fp8_context_fmha": False}),
    # fp8 weights and KV cache: on, even when not asked for ("enabled to support FP8 Paged Context FMHA")
    ({**PAGED, "use_fp8_context_fmha": False}, "FP8", "FP8", 90, {"use_fp8_context_fmha": True}),
    # fp16: off ("must be used together with the fp8 quantization workflow")
    ({**PAGED, "use_fp8_context_fmha": True}, None, None, 90, {"use_fp8_context_fmha": False}),
    # pre-Ada GPU: off, and paged context FMHA too with an FP8 KV cache
    ({**PAGED, "use_fp8_context_fmha": True}, "FP8", "FP8", 80,
     {"use_fp8_context_fmha": False, "use_paged_context_fmha": False}),
    # no context FMHA at all: both off
    ({"context_fmha": False, "use_paged_context_fmha": True, "use_fp8_context_fmha": True}, "FP8", "FP8", 90,
     {"use_fp8_context_fmha": False, "use_paged_context_fmha": False}),
    # reduce_fusion needs tensor parallelism; user_buffer needs reduce_fusion
    ({**PAGED, "reduce_fusion": True, "user_buffer": True}, None, None, 90,
     {"reduce_fusion": False, "user_buffer": False}),
])
def test_builder_rules(requested, quant, kv, sm, expected):
    predicted = predicted_plugin_config(requested, quant, kv, sm=sm)
    for name, value in expected.items():
        assert predicted[name] is value, name


def test_builtin_variants_ask_only_for_what_is_built():
    for profile in ("cpu-tiny", "h100-mistral-7b"):
        for settings in load_profile(profile).variants.values():
            build, quant = tc.build_config(settings), tc.quant_config(settings)
            predicted = predicted_effective(build, quant)
            assert setting_changes(requested_settings(build, quant), predicted) == [], (profile, settings.variant)
            if settings.is_fp8:
                assert predicted["build_config"]["strongly_typed"] is True


def engine_config(**build) -> dict:
    plugins = build.pop("plugin_config", {})
    return {"version": "1.2.0", "pretrained_config": {"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None,
                                                                        "exclude_modules": ["lm_head"]}},
            "build_config": {"max_seq_len": 4096, "gather_context_logits": True, "plugin_config": plugins, **build}}


def test_changes_are_read_back_from_config_json():
    settings = load_profile("h100-mistral-7b").variants["fp8"]
    settings.plugins = {**settings.plugins, "use_fp8_context_fmha": True}
    requested = requested_settings(tc.build_config(settings), tc.quant_config(settings))
    built = effective_settings(engine_config(plugin_config={**tc.plugin_config(settings), "use_fp8_context_fmha": False,
                                                            "gpt_attention_plugin": "float16"}))
    # "auto" resolved to the model dtype is not a change; FP8 context FMHA switched off is
    assert setting_changes(requested, built) == [
        {"setting": "plugin_config.use_fp8_context_fmha", "requested": True, "effective": False}]
    assert built["quantization"]["exclude_modules"] == ["lm_head"]


def test_can_score_needs_gathered_context_logits():
    assert can_score(effective_settings(engine_config()))[0] is True
    ok, why = can_score(effective_settings(engine_config(gather_context_logits=False)))
    assert not ok and "gather_context_logits" in why and "trtbuild compile --force" in why
    assert can_score(None)[0] is False


# --- calibration inputs ------------------------------------------------------------------------------

def test_calibration_kinds_and_refusals(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    text = tmp_path / "calib.txt"
    text.write_text("one paragraph\n\nanother paragraph\n")
    data_dir = tmp_path / "my-set"
    data_dir.mkdir()
    (data_dir / "train.jsonl").write_text('{"text": "x"}\n')
    assert [calibration_kind(d) for d in ("builtin", str(text), str(data_dir), "cnn_dailymail", "pileval")] == [
        "bundled", "file", "dir", "hub", "hub"]
    (tmp_path / "empty").mkdir()
    hub_named = tmp_path / "cnn_dailymail-local"  # TensorRT-LLM would take its hub branch for this path
    hub_named.mkdir()
    (hub_named / "train.jsonl").write_text('{"text": "x"}\n')
    refusals = {
        "wikitext": "TensorRT-LLM cannot calibrate on 'wikitext'",  # else NotImplementedError inside TRT-LLM, late
        str(tmp_path / "none.jsonl"): "not found",
        str(tmp_path / "empty"): "holds no data files",
        str(hub_named): "from the hub instead; rename the directory",
    }
    for dataset, message in refusals.items():
        with pytest.raises(TrtbuildError, match=message):
            calibration_kind(dataset)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrtbuildError, match="HF_HUB_OFFLINE is set"):
        calibration_kind("cnn_dailymail")
    assert calibration_kind("builtin") == "bundled"  # the default never needs the hub


def test_calibration_directory_is_what_tensorrt_llm_reads(tmp_path):
    """train.jsonl, one {"text"} per line: datasets' JSON builder, train split from the file name; read here
    by the double's copy of get_calib_dataloader's local-directory branch."""
    import sys
    from pathlib import Path

    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello!"}]}) + "\n"
                     + json.dumps({"text": "Plain text."}) + "\n")
    dataset, record = prepare_calibration(str(chats), tmp_path / "work")
    assert record == {"source": str(chats), "kind": "file", "samples": 2, "format": "train.jsonl (text)"}
    rows = [json.loads(line) for line in (Path(dataset) / CALIB_FILE).read_text().splitlines()]
    assert rows == [{"text": "Hi\n\nHello!"}, {"text": "Plain text."}]
    assert sorted(p.name for p in Path(dataset).iterdir()) == [CALIB_FILE]  # no temporary file left
    sys.path.insert(0, str(Path(__file__).parent / "trtllm_double"))
    try:
        from tensorrt_llm.llmapi.llm import get_calib_dataloader

        assert get_calib_dataloader(dataset, 1) == ["Hi\n\nHello!"]
    finally:
        sys.path.remove(str(Path(__file__).parent / "trtllm_double"))
        for name in [m for m in sys.modules if m.split(".")[0] == "tensorrt_llm"]:
            del sys.modules[name]
    assert write_calib_dir("builtin", tmp_path / "bundled") > 100  # the bundled corpus (chats + text)
