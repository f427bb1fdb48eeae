"""FP8 quantization with the real nvidia-modelopt on the embedded model: what the export holds, that the
scales are the calibrated maxima / 448, the cache, and bad calibration input."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open

from trtbuild.config import CalibrationSettings
from trtbuild.errors import TrtbuildError
from trtbuild.quantize import calibration_batches, load_calibration_samples, quantization_key, quantize_fp8
from trtbuild.tokenizer import Tokenizer

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
CALIB = CalibrationSettings(num_samples=24, max_seq_len=96)  # small: the tests check format, not accuracy
FP8_MAX = 448.0


@pytest.fixture(scope="module", params=[False, True], ids=["fp8", "fp8-kv8"])
def quantized(request, workspace, tiny_model):
    return quantize_fp8(workspace, tiny_model, CALIB, kv_cache_fp8=request.param, progress=False)


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(path / "model.safetensors", "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def test_export_holds_fp8_weights_with_scalar_float32_scales(quantized, tiny_model):
    config = json.loads((tiny_model.path / "config.json").read_text())
    tensors = _tensors(quantized.path)
    for layer in range(config["num_hidden_layers"]):
        for proj in PROJECTIONS:
            name = f"model.layers.{layer}.{proj}"
            assert tensors[f"{name}.weight"].dtype == torch.float8_e4m3fn, name
            for scale in ("weight_scale", "input_scale"):
                value = tensors[f"{name}.{scale}"]
                assert value.dtype == torch.float32 and value.shape == (), f"{name}.{scale}"
                assert math.isfinite(value.item()) and value.item() > 0, f"{name}.{scale}"
        for kv in ("k", "v"):  # the FP8 KV cache scales, only in the kv8 export
            name = f"model.layers.{layer}.self_attn.{kv}_proj.{kv}_scale"
            assert (name in tensors) == quantized.kv_cache_fp8
            if quantized.kv_cache_fp8:
                value = tensors[name]
                assert value.dtype == torch.float32 and value.shape == () and 0 < value.item() < math.inf, name
    # Embeddings, lm_head and norms stay in the build dtype.
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert tensors[name].dtype == torch.float16, name
    assert (quantized.path / "tokenizer.model.v3").read_bytes() == (tiny_model.path / "tokenizer.model.v3").read_bytes()


def test_quant_configs_say_fp8(quantized):
    hf_quant = json.loads((quantized.path / "hf_quant_config.json").read_text())["quantization"]
    assert hf_quant["quant_algo"] == "FP8"
    assert hf_quant["kv_cache_quant_algo"] == ("FP8" if quantized.kv_cache_fp8 else None)
    assert set(hf_quant["exclude_modules"]) >= {"lm_head", "model.embed_tokens"}
    config = json.loads((quantized.path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "modelopt"
    assert config["rope_theta"] == 1e6  # kept top-level: TensorRT-LLM reads it from there


def test_scales_are_calibrated_maxima_over_448(quantized, tiny_model):
    """weight_scale = max|W| / 448, input_scale = max|x| / 448 over the calibration batches (a plain
    float16 forward, as calibration runs), and the FP8 weights dequantize back to the source weights
    within E4M3's precision."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float16).eval()  # the build dtype
    seen: dict[str, float] = {}
    hooks = [module.register_forward_pre_hook(
        lambda m, args, name=name: seen.__setitem__(name, max(seen.get(name, 0.0), args[0].abs().max().item())))
        for name, module in model.named_modules() if name.endswith(PROJECTIONS)]
    with torch.no_grad():
        for batch in calibration_batches(CALIB, Tokenizer.from_model_dir(tiny_model.path)):
            model(torch.tensor(batch))
    for hook in hooks:
        hook.remove()

    tensors = _tensors(quantized.path)
    weights = {name: w.float() for name, w in model.named_parameters()}
    for name in seen:
        w = weights[f"{name}.weight"]
        assert tensors[f"{name}.weight_scale"].item() == pytest.approx(w.abs().max().item() / FP8_MAX, rel=2e-3)
        assert tensors[f"{name}.input_scale"].item() == pytest.approx(seen[name] / FP8_MAX, rel=2e-3)
        dequantized = tensors[f"{name}.weight"].float() * tensors[f"{name}.weight_scale"]
        assert ((dequantized - w).norm() / w.norm()).item() < 0.04, name  # E4M3: 3 mantissa bits


def test_second_call_is_a_cache_hit(quantized, workspace, tiny_model):
    again = quantize_fp8(workspace, tiny_model, CALIB, kv_cache_fp8=quantized.kv_cache_fp8, progress=False)
    assert again.cache_hit and (again.path, again.key) == (quantized.path, quantized.key)
    assert again.calibration == quantized.calibration and again.calibration["tokens"] > 0


def test_every_input_of_the_export_changes_the_key(tiny_model):
    base = quantization_key(tiny_model, CALIB, False, "float16")[0]
    changed = [quantization_key(tiny_model, dataclasses.replace(CALIB, num_samples=25), False, "float16"),
               quantization_key(tiny_model, dataclasses.replace(CALIB, max_seq_len=97), False, "float16"),
               quantization_key(tiny_model, CALIB, True, "float16"),
               quantization_key(tiny_model, CALIB, False, "bfloat16"),
               quantization_key(dataclasses.replace(tiny_model, files={**tiny_model.files, "config.json": "0"}),
                                CALIB, False, "float16")]
    assert len({base, *(key for key, _ in changed)}) == 1 + len(changed)


def test_local_calibration_files(tmp_path, workspace, tiny_model, tokenizer):
    text = tmp_path / "calib.txt"
    text.write_text("First paragraph about rivers.\nStill the first.\n\nSecond paragraph.\n")
    assert load_calibration_samples(CalibrationSettings(dataset=str(text))) == [
        {"text": "First paragraph about rivers.\nStill the first."}, {"text": "Second paragraph."}]
    lines = tmp_path / "lines.txt"
    lines.write_text("one line\nanother line\n")
    assert len(load_calibration_samples(CalibrationSettings(dataset=str(lines)))) == 2
    chats = tmp_path / "calib.jsonl"
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    chats.write_text(json.dumps(chat) + "\n" + json.dumps({"text": "plain"}) + "\n")
    batches = calibration_batches(CalibrationSettings(dataset=str(chats), batch_size=2, seed=0), tokenizer)
    assert sorted(batches[0]) == sorted([tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
                                         + tokenizer.encode("Hello", bos=False) + [tokenizer.eos_id],
                                         tokenizer.encode("plain")])
    result = quantize_fp8(workspace, tiny_model, CalibrationSettings(dataset=str(chats)), False, progress=False)
    assert result.calibration["data_sha256"] and (result.path / "hf_quant_config.json").is_file()


@pytest.mark.parametrize("content, message", [
    (None, "calibration file .* not found"),
    ("", "holds no text"),
    ('{"text": "fine"}\n{oops\n', r"calib.jsonl:2: not valid JSON"),
    ('{"prompt": "x"}\n', r'expected \{"text": "..."\} or \{"messages": \[...\]\}'),
])
def test_bad_calibration_files_are_clear_errors(tmp_path, workspace, tiny_model, content, message):
    path = tmp_path / "calib.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TrtbuildError, match=message) as err:
        quantize_fp8(workspace, tiny_model, CalibrationSettings(dataset=str(path)), False, progress=False)
    assert "\n" not in str(err.value)


def test_a_hub_dataset_without_the_hub_says_to_pass_a_local_file():
    with pytest.raises(TrtbuildError, match=r"pass a local \.txt/\.jsonl file"):
        load_calibration_samples(CalibrationSettings(dataset="cnn_dailymail"))


def test_a_failed_export_leaves_nothing_behind(monkeypatch, workspace, tiny_model):
    import trtbuild.quantize as quantize

    def broken_export(model, out_dir, dtype):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(quantize, "export_checkpoint", broken_export)
    settings = CalibrationSettings(num_samples=4, max_seq_len=32, seed=99)
    final = workspace.quantized_dir(quantization_key(tiny_model, settings, False, "float16")[0])
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_fp8(workspace, tiny_model, settings, False, progress=False)
    assert not final.exists()
    assert not list(workspace.tmp_dir.glob(f"{final.name}.*"))  # the half-written export is gone too
