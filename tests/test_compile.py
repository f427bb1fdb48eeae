"""compile: engine directories of every variant, the cache, atomic builds, verification."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from trtbuild import compile as compile_mod
from trtbuild.compile import check_trtllm_engine, check_weights, compile_engine, precision, tensor_dtypes
from trtbuild.errors import TrtbuildError
from trtbuild.manifest import artifact_hashes, load_manifest, verify_engine
from trtbuild.plan import GPU, GPUS, MiB, load_model_config, plan_memory
from trtbuild.workspace import MANIFEST, Workspace


@pytest.fixture
def fresh_ws(tmp_path):
    return Workspace(tmp_path / "ws")


def unfinished(ws):
    """Directories a build left behind in the workspace's tmp/."""
    return [p for p in ws.tmp_dir.iterdir() if p.is_dir()] if ws.tmp_dir.is_dir() else []


# --- what each variant's engine directory holds -------------------------------------------------

def test_fp16_engine_holds_float16_weights(engine_dirs, tiny_model):
    engine = engine_dirs["fp16"]
    manifest = verify_engine(engine)
    assert manifest.backend == "torch" and manifest.variant == "fp16"
    assert manifest.precision == {"weights": "float16", "activations": "float16", "kv_cache": "float16",
                                  "compute": "float16"}
    dtypes = tensor_dtypes(engine / "model")
    assert set(dtypes.values()) == {"F16"}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(dtypes)  # embeddings and lm_head too
    config = json.loads((engine / "model" / "config.json").read_text())
    assert config["torch_dtype"] == "float16" and "quantization_config" not in config
    assert (engine / "model" / "tokenizer.model.v3").is_file()
    assert manifest.calibration is None


@pytest.mark.parametrize("variant", ["fp8", "fp8-kv8"])
def test_fp8_engine_holds_float8_weights_and_scales(engine_dirs, variant):
    engine = engine_dirs[variant]
    manifest = verify_engine(engine)
    model = engine / "model"
    dtypes = tensor_dtypes(model)
    fp8 = sorted(k for k, v in dtypes.items() if v == "F8_E4M3")
    assert len(fp8) == 7 * json.loads((model / "config.json").read_text())["num_hidden_layers"]  # q k v o gate up down
    for name in fp8:
        base = name.removesuffix("weight")
        assert dtypes[base + "weight_scale"] == dtypes[base + "input_scale"] == "F32"
    assert dtypes["lm_head.weight"] == dtypes["model.embed_tokens.weight"] == "F16"  # not quantized
    config = json.loads((model / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "modelopt"
    quant = json.loads((model / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == "FP8"
    kv8 = variant == "fp8-kv8"
    assert manifest.precision["weights"] == manifest.precision["activations"] == "float8_e4m3fn"
    assert manifest.precision["kv_cache"] == ("float8_e4m3fn" if kv8 else "float16")
    assert any(k.endswith(("k_scale", "v_scale")) for k in dtypes) == kv8
    assert (quant.get("kv_cache_quant_algo") == "FP8") == kv8
    assert manifest.calibration["dataset"] == "builtin"
    assert manifest.trtllm["quant_config"]["kv_cache_quant_algo"] == ("FP8" if kv8 else None)


def test_manifest_records_the_build(engine_dirs, tiny_model, profile):
    manifest = load_manifest(engine_dirs["fp8"])
    assert manifest.build == profile.variants["fp8"].to_dict()
    assert manifest.source["model_id"] == tiny_model.model_id
    assert manifest.source["files"] == tiny_model.files and manifest.source["path"] == str(tiny_model.path)
    assert set(manifest.versions) >= {"trtbuild", "torch", "transformers", "modelopt", "tensorrt_llm"}
    assert manifest.artifacts == artifact_hashes(engine_dirs["fp8"])
    assert manifest.schema_version == 1 and manifest.built_at and manifest.build_seconds > 0
    # what TensorRT-LLM would be handed for the same variant, and the memory plan it was checked against
    assert manifest.trtllm["build_config"]["max_seq_len"] == profile.variants["fp8"].max_seq_len
    assert manifest.trtllm["cli"][1][0] == "trtllm-build"
    assert manifest.trtllm["memory_plan"]["verdict"] == "ok"
    assert manifest.trtllm["memory_plan"]["gpu"] == profile.gpu


# --- the cache ------------------------------------------------------------------------------------

def test_repeat_is_a_cache_hit(workspace, engine_dirs, tiny_model, profile):
    before = {p: p.stat().st_mtime_ns for p in engine_dirs["fp16"].rglob("*")}
    result = compile_engine(workspace, profile.variants["fp16"], tiny_model, backend="torch", progress=False)
    assert result.cache_hit and result.engine_dir == engine_dirs["fp16"]
    assert {p: p.stat().st_mtime_ns for p in engine_dirs["fp16"].rglob("*")} == before  # nothing rewritten
    assert result.manifest.key == load_manifest(engine_dirs["fp16"]).key


def test_changed_setting_is_a_new_engine(fresh_ws, tiny_model, profile):
    base = profile.variants["fp16"]
    first = compile_engine(fresh_ws, base, tiny_model, backend="torch", progress=False)
    changed = compile_engine(fresh_ws, dataclasses.replace(base, max_batch_size=base.max_batch_size + 1),
                             tiny_model, backend="torch", progress=False)
    assert not first.cache_hit and not changed.cache_hit
    assert changed.manifest.key != first.manifest.key and changed.engine_dir != first.engine_dir
    assert changed.manifest.build["max_batch_size"] == base.max_batch_size + 1
    forced = compile_engine(fresh_ws, base, tiny_model, backend="torch", force=True, progress=False)
    assert not forced.cache_hit and forced.engine_dir == first.engine_dir
    assert len(fresh_ws.engines()) == 2 and unfinished(fresh_ws) == []


# --- atomic builds ----------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_build_leaves_nothing(fresh_ws, tiny_model, profile, monkeypatch, error):
    def interrupt(*args, **kwargs):
        raise error("interrupted mid-build")

    monkeypatch.setattr(compile_mod, "check_weights", interrupt)  # after the weights are written
    with pytest.raises(error):
        compile_engine(fresh_ws, profile.variants["fp16"], tiny_model, backend="torch", progress=False)
    assert not fresh_ws.engines_dir.exists() or list(fresh_ws.engines_dir.iterdir()) == []
    assert unfinished(fresh_ws) == []
    monkeypatch.undo()  # the next compile builds normally
    assert not compile_engine(fresh_ws, profile.variants["fp16"], tiny_model, backend="torch",
                              progress=False).cache_hit


def test_build_that_cannot_fit_is_refused_before_building(fresh_ws, tiny_model, profile, monkeypatch):
    monkeypatch.setitem(GPUS, "toy", GPU("toy", 16 * MiB, 1e11))
    with pytest.raises(TrtbuildError, match=r"^fp16 cannot run on toy: weights \+ activations \+ reserve"):
        compile_engine(fresh_ws, profile.variants["fp16"], tiny_model, backend="torch", progress=False, gpu="toy")
    assert fresh_ws.engines() == [] and unfinished(fresh_ws) == []


def test_unservable_batch_builds_with_a_warning(fresh_ws, tiny_model, profile, monkeypatch):
    settings = profile.variants["fp16"]
    need = plan_memory(load_model_config(tiny_model.path), settings)  # on the profile's H100
    fixed = need.weight_bytes + need.activation_bytes + need.reserve_bytes
    half_the_batch = need.kv_bytes_per_token * need.requested_tokens // 2
    monkeypatch.setitem(GPUS, "small", GPU("small", fixed + int(half_the_batch / 0.9), 1e11))
    result = compile_engine(fresh_ws, settings, tiny_model, backend="torch", progress=False, gpu="small")
    assert not result.cache_hit and len(result.warnings) == 1
    assert "fp16 on small: max_batch_size x max_seq_len = 16,384 tokens but the KV cache holds 8," in result.warnings[0]
    assert result.manifest.trtllm["memory_plan"]["verdict"] == "warn"


def test_tensorrt_llm_backend_without_it_is_one_line(fresh_ws, tiny_model, profile):
    from trtbuild import trtllm_backend

    if trtllm_backend.available():
        pytest.skip("TensorRT-LLM and a GPU are present: the backend would build")
    with pytest.raises(TrtbuildError) as info:
        compile_engine(fresh_ws, profile.variants["fp16"], tiny_model, backend="tensorrt-llm", progress=False)
    assert "\n" not in str(info.value) and "--backend torch" in str(info.value)
    assert not fresh_ws.engines_dir.exists()
    assert compile_mod.resolve_backend("auto") == "torch"


# --- verification ---------------------------------------------------------------------------------

@pytest.fixture
def engine_copy(engine_dirs, tmp_path):
    """A private copy of the fp16 engine to damage."""
    return shutil.copytree(engine_dirs["fp16"], tmp_path / "engines" / engine_dirs["fp16"].name)


def test_tampered_file_is_a_clear_error(engine_copy):
    weights = engine_copy / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(TrtbuildError, match=r"model/model.safetensors changed since it was built \(hash mismatch\); "
                                            r"rebuild it with `trtbuild compile --force`"):
        verify_engine(engine_copy)
    verify_engine(engine_copy, check_hashes=False)  # TRTBUILD_VERIFY=size: sizes only, still loads
    (engine_copy / "model" / "config.json").unlink()
    with pytest.raises(TrtbuildError, match="is missing model/config.json"):
        verify_engine(engine_copy, check_hashes=False)


def test_tampered_engine_is_not_a_cache_hit(fresh_ws, tiny_model, profile):
    built = compile_engine(fresh_ws, profile.variants["fp16"], tiny_model, backend="torch", progress=False)
    (built.engine_dir / "model" / "config.json").write_text("{}")
    with pytest.raises(TrtbuildError, match="config.json changed since it was built"):
        compile_engine(fresh_ws, profile.variants["fp16"], tiny_model, backend="torch", progress=False)
    rebuilt = compile_engine(fresh_ws, profile.variants["fp16"], tiny_model, backend="torch", force=True,
                             progress=False)
    assert verify_engine(rebuilt.engine_dir).key == built.manifest.key


def test_engine_from_another_tensorrt_llm_version(engine_copy, monkeypatch):
    manifest = json.loads((engine_copy / MANIFEST).read_text())
    manifest["backend"] = "tensorrt-llm"
    manifest["versions"]["tensorrt_llm"] = "1.2.0"
    (engine_copy / MANIFEST).write_text(json.dumps(manifest))
    import trtbuild.manifest as manifest_mod

    here = {**manifest_mod.library_versions(), "tensorrt_llm": "1.2.1"}
    monkeypatch.setattr(manifest_mod, "library_versions", lambda: here)
    with pytest.raises(TrtbuildError, match=r"was built with tensorrt_llm 1\.2\.0, this machine has 1\.2\.1; "
                                            r"rebuild it here with `trtbuild compile --force`"):
        verify_engine(engine_copy)


def test_check_weights_refuses_a_wrong_checkpoint(engine_dirs, profile):
    with pytest.raises(TrtbuildError, match="float8_e4m3fn weights"):
        check_weights(engine_dirs["fp16"] / "model", profile.variants["fp8"])  # fp16 weights claimed as FP8
    with pytest.raises(TrtbuildError, match="tensors are not float16"):
        check_weights(engine_dirs["fp8"] / "model", profile.variants["fp16"])  # FP8 claimed as fp16


def test_precision_record(profile):
    assert precision(profile.variants["fp8"]) == {"weights": "float8_e4m3fn", "activations": "float8_e4m3fn",
                                                  "kv_cache": "float16", "compute": "float16"}
    assert precision(profile.variants["fp8-kv8"])["kv_cache"] == "float8_e4m3fn"
    bf16 = dataclasses.replace(profile.variants["fp16"], dtype="bfloat16")
    assert precision(bf16)["weights"] == precision(bf16)["kv_cache"] == "bfloat16"


def test_check_trtllm_engine_wants_every_rank(tmp_path, profile):
    settings = dataclasses.replace(profile.variants["fp16"], tp_size=2)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "rank0.engine").write_bytes(b"plan")
    with pytest.raises(TrtbuildError, match="saved 1 rank engine\\(s\\) for tp_size 2"):
        check_trtllm_engine(tmp_path, settings)
    (tmp_path / "rank1.engine").write_bytes(b"plan")
    check_trtllm_engine(tmp_path, settings)


def test_convert_checkpoint_shards_and_casts(tiny_model, tmp_path, monkeypatch):
    """The 7B path: shards written as they fill, an index, every float cast; consolidated.* ignored."""
    import torch
    from safetensors.torch import load_file

    src = shutil.copytree(tiny_model.path, tmp_path / "src")
    (src / "consolidated.safetensors").write_bytes(b"not read")
    monkeypatch.setattr(compile_mod, "SHARD_BYTES", 8 * MiB)
    compile_mod.convert_checkpoint(src, tmp_path / "out", "bfloat16")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(set(index.values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    original = load_file(str(src / "model.safetensors"))
    converted = {k: v for shard in shards for k, v in load_file(str(tmp_path / "out" / shard)).items()}
    assert set(index) == set(converted) == set(original)
    for name, tensor in original.items():
        assert converted[name].dtype == torch.bfloat16
        assert torch.equal(converted[name], tensor.to(torch.bfloat16))
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
