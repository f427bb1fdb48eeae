"""Memory plans with the real Mistral-7B-Instruct-v0.3 config (bundled: works offline)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from trtbuild import REAL_MODEL
from trtbuild.config import load_profile, parse_profile
from trtbuild.errors import TrtbuildError
from trtbuild.plan import (GPUS, GiB, MemoryPlan, decode_tokens_per_s_bound, get_gpu, gpu_from_device_name,
                           load_model_config, plan_memory)

KiB = 1024


@pytest.fixture(scope="module")
def config():
    return load_model_config(REAL_MODEL)  # no workspace, no network: the bundled copy


@pytest.fixture(scope="module")
def h100():
    return load_profile("h100-mistral-7b").variants


def test_bundled_config_is_the_real_7b(config):
    assert config["architectures"] == ["MistralForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_dim"], config["intermediate_size"],
            config["vocab_size"]) == (4096, 32, 32, 8, 128, 14336, 32768)
    assert config["rope_theta"] == 1e6 and config["sliding_window"] is None
    assert config["max_position_embeddings"] == 32768 and config["tie_word_embeddings"] is False


def test_7b_numbers(config, h100):
    fp16, fp8, kv8 = (plan_memory(config, h100[v]) for v in ("fp16", "fp8", "fp8-kv8"))
    assert fp16.params == pytest.approx(7.25e9, rel=0.01)
    assert fp16.weight_bytes == 2 * fp16.params == pytest.approx(14.5e9, rel=0.01)
    # FP8: the 6.98 B linear parameters at 1 B, embeddings + lm_head (2 x 134 M) + norms at 2 B
    assert fp8.weight_bytes == pytest.approx(6.979e9 + 2 * 0.2685e9, rel=0.001)
    assert fp16.kv_bytes_per_token == fp8.kv_bytes_per_token == 128 * KiB
    assert kv8.kv_bytes_per_token == 64 * KiB
    assert fp16.decode_tokens_per_s_bound == pytest.approx(3.35e12 / 14.5e9, rel=0.01)  # ~231 tok/s
    assert fp8.decode_tokens_per_s_bound == pytest.approx(3.35e12 / 7.52e9, rel=0.01)


def test_h100_profile_verdicts(config, h100):
    """The profile's comment: 128 x 4096 tokens need 64 GiB of fp16 KV cache, which does not fit beside
    fp16 weights (warn); with the FP8 KV cache (32 GiB) the whole batch is servable."""
    fp16 = plan_memory(config, h100["fp16"])
    assert fp16.requested_tokens == 128 * 4096 and fp16.requested_tokens * 128 * KiB == 64 * GiB
    assert fp16.verdict == "warn" and not fp16.servable
    assert 100 <= fp16.max_full_sequences < 128
    assert "lower max_batch_size or max_seq_len" in fp16.reasons[0]
    kv8 = plan_memory(config, h100["fp8-kv8"])
    assert kv8.verdict == "ok" and kv8.servable and kv8.reasons == []
    assert kv8.kv_tokens > 2 * fp16.kv_tokens  # half the bytes per token, and more memory left
    # the KV budget is the fraction of what weights, activations and the reserve leave
    left = fp16.gpu_memory_bytes - fp16.weight_bytes - fp16.activation_bytes - fp16.reserve_bytes
    assert fp16.kv_cache_bytes == int(left * 0.9)
    assert fp16.kv_tokens == fp16.kv_cache_bytes // (128 * KiB) // 32 * 32


def test_unservable_and_refused(config):
    long = parse_profile({"build": {"max_batch_size": 2048, "max_seq_len": 32768, "max_input_len": 16384,
                                    "max_num_tokens": 16384}}).variants["fp16"]
    plan = plan_memory(config, long)
    assert plan.verdict == "warn" and not plan.servable and plan.requested_tokens == 2048 * 32768
    # the same build on an H200 holds more, but still not 64 M tokens
    assert plan_memory(config, long, gpu="H200").kv_tokens > plan.kv_tokens
    # a 70B-class model in fp16 does not fit one H100 at all
    big = {**config, "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
           "intermediate_size": 28672}
    refused = plan_memory(big, long)
    assert refused.verdict == "refuse" and refused.kv_tokens == 0
    assert "more than the 79.6 GiB of one H100-SXM-80GB" in refused.reasons[0]


def test_tensor_parallel_splits_per_gpu(config, h100):
    tp2 = dataclasses.replace(h100["fp16"], tp_size=2)
    one, two = plan_memory(config, h100["fp16"]), plan_memory(config, tp2)
    assert two.weight_bytes == one.weight_bytes // 2
    assert two.kv_bytes_per_token == one.kv_bytes_per_token // 2
    assert two.verdict == "ok"  # two H100s hold the whole fp16 batch


def test_plan_json_round_trip(config, h100):
    plan = plan_memory(config, h100["fp8"], gpu="H100-PCIe-80GB", free_gpu_memory_fraction=0.8, model=REAL_MODEL)
    again = MemoryPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.gpu == "H100-PCIe-80GB" and again.model == REAL_MODEL
    assert "fp8 on H100-PCIe-80GB" in plan.summary()


def test_gpus_and_bound():
    assert set(GPUS) == {"H100-SXM-80GB", "H100-PCIe-80GB", "H200"}
    assert get_gpu("h200").bandwidth_bytes_per_s == 4.8e12
    assert decode_tokens_per_s_bound(14.5e9, "H100-SXM-80GB") == pytest.approx(231, abs=1)
    assert gpu_from_device_name("NVIDIA H100 80GB HBM3").name == "H100-SXM-80GB"
    assert gpu_from_device_name("NVIDIA H100 PCIe").name == "H100-PCIe-80GB"
    assert gpu_from_device_name("NVIDIA H200").name == "H200"
    assert gpu_from_device_name("NVIDIA A100-SXM4-80GB") is None
    with pytest.raises(TrtbuildError, match="unknown GPU 'A100'; pass one of: H100-SXM-80GB"):
        get_gpu("A100")


def test_model_config_sources(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert load_model_config(tmp_path) == {"hidden_size": 8}
    with pytest.raises(TrtbuildError, match="fetch it first"):
        load_model_config("someone/some-model")
    with pytest.raises(TrtbuildError, match="lacks 'num_attention_heads'"):
        plan_memory({"hidden_size": 8}, load_profile("cpu-tiny").variants["fp16"])
    with pytest.raises(TrtbuildError, match="free_gpu_memory_fraction"):
        plan_memory(load_model_config(REAL_MODEL), load_profile("cpu-tiny").variants["fp16"],
                    free_gpu_memory_fraction=0)


def test_builtin_model_plans_without_creating_it(tiny_model, tmp_path, capsys):
    from trtbuild.cli import main
    from trtbuild.plan import ModelShape

    recipe_config = load_model_config("builtin:tiny-mistral")
    checkpoint_config = json.loads((tiny_model.path / "config.json").read_text())
    assert ModelShape.from_config(recipe_config) == ModelShape.from_config(checkpoint_config)
    main(["--workspace", str(tmp_path), "plan", "--variant", "fp16", "--json"])  # cpu-tiny, fresh workspace
    (plan,) = json.loads(capsys.readouterr().out)["plans"]
    assert plan["model"] == "builtin:tiny-mistral" and plan["verdict"] == "ok"
    assert not (tmp_path / "models").exists()
