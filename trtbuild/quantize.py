"""FP8 post-training quantization with nvidia-modelopt, exported as a unified Hugging Face checkpoint.

    source checkpoint --(load)--> MistralForCausalLM --mtq.quantize(FP8 [+ FP8 KV], calibration)-->
    fake-quantized model --export_hf_checkpoint--> float8_e4m3fn weights + float32 weight_scale /
    input_scale (+ k_scale / v_scale) + hf_quant_config.json, in ws.quantized_dir(key)

Per-tensor static scales ("max" calibration: scale = amax / 448) for the inputs and weights of every
q/k/v/o/gate/up/down projection; lm_head and embeddings stay in the build dtype (modelopt's defaults,
as TensorRT-LLM's FP8 recipe). The key hashes the source files, the calibration settings and data, the
KV flag, the dtype and the modelopt version: a second call with the same inputs returns at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trtbuild.config import CalibrationSettings
from trtbuild.errors import TrtbuildError
from trtbuild.manifest import canonical_hash, library_versions, sha256_file
from trtbuild.models import SourceModel
from trtbuild.workspace import Workspace, atomic_write_json

INFO_FILE = "trtbuild_quantize.json"  # written last into the export: what it was made from
TOKENIZER_FILES = ("tokenizer.model.v3", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".md")


@dataclass
class QuantizedCheckpoint:
    path: Path  # the unified HF checkpoint (config.json, model.safetensors, hf_quant_config.json, tokenizer)
    key: str
    calibration: dict  # CalibrationSettings as used, plus the data's sha256 and the token count
    kv_cache_fp8: bool
    dtype: str = "float16"
    cache_hit: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "path": str(self.path)}

    @classmethod
    def from_dict(cls, data: dict) -> QuantizedCheckpoint:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in names}, "path": Path(data["path"])})


def quantize_fp8(ws: Workspace, source: SourceModel, calibration: CalibrationSettings, kv_cache_fp8: bool,
                 dtype: str = "float16", progress: bool = True) -> QuantizedCheckpoint:
    """The FP8 checkpoint of `source`, from the workspace cache or made now (atomically)."""
    if dtype not in ("float16", "bfloat16"):
        raise TrtbuildError(f"quantize: dtype must be float16 or bfloat16, got {dtype!r}")
    start = time.perf_counter()
    key, calib = quantization_key(source, calibration, kv_cache_fp8, dtype)
    final = ws.quantized_dir(key)
    if (final / INFO_FILE).is_file():
        return QuantizedCheckpoint.from_dict({**_read_json(final / INFO_FILE), "path": final, "cache_hit": True,
                                              "seconds": round(time.perf_counter() - start, 3)})

    from trtbuild.tokenizer import Tokenizer

    batches = calibration_batches(calibration, Tokenizer.from_model_dir(source.path))
    calib["tokens"] = sum(len(ids) for batch in batches for ids in batch)
    model = load_for_calibration(source.path, dtype)
    fake_quantize_fp8(model, batches, kv_cache_fp8, progress=progress)
    with ws.atomic_dir(final) as tmp:
        export_checkpoint(model, tmp, dtype)
        for name in TOKENIZER_FILES:
            if (source.path / name).is_file():
                shutil.copyfile(source.path / name, tmp / name)
        result = QuantizedCheckpoint(final, key, calib, kv_cache_fp8, dtype,
                                     seconds=round(time.perf_counter() - start, 3))
        atomic_write_json(tmp / INFO_FILE, {**result.to_dict(), "source": source.to_dict(),
                                            "versions": library_versions()})
    return result


def quantization_key(source: SourceModel, calibration: CalibrationSettings, kv_cache_fp8: bool,
                     dtype: str) -> tuple[str, dict]:
    """(key, calibration record): everything that decides the bytes of the export."""
    calib = {**dataclasses.asdict(calibration), "data_sha256": calibration_fingerprint(calibration.dataset)}
    versions = library_versions()
    key = canonical_hash({"source": source.files, "calibration": calib, "kv_cache_fp8": kv_cache_fp8,
                          "dtype": dtype, "modelopt": versions["modelopt"], "transformers": versions["transformers"]})
    return key, calib


# --- the modelopt steps ---------------------------------------------------------------------------------

def fp8_config(kv_cache_fp8: bool) -> dict:
    """modelopt's FP8 recipe; with the KV cache, FP8_KV_CFG's "*[kv]_bmm_quantizer" entries appended
    (what mtq.update_quant_cfg_with_kv_cache_quant does, without its print to stdout)."""
    import modelopt.torch.quantization as mtq

    config = {**mtq.FP8_DEFAULT_CFG, "quant_cfg": list(mtq.FP8_DEFAULT_CFG["quant_cfg"])}
    if kv_cache_fp8:
        config["quant_cfg"] += list(mtq.FP8_KV_CFG["quant_cfg"])
    return config


def load_for_calibration(model_dir: Path, dtype: str):
    """The model in the build dtype, on the GPU where there is one: calibration then sees the activations
    the engine computes. On CPU float16 is no slower than float32 for the tiny model (64 samples: 0.6 s
    vs 0.8 s), and the export then needs no cast."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                 device_map=device if device == "cuda" else None)
    return model.eval()


def fake_quantize_fp8(model, batches: list[list[list[int]]], kv_cache_fp8: bool, progress: bool = True):
    """Insert FP8 quantizers and calibrate them on the batches (lists of token id lists), in place."""
    import modelopt.torch.quantization as mtq
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device

    @torch.no_grad()
    def forward_loop(m):
        for batch in tqdm(batches, desc="calibrating", unit="batch", disable=not progress, file=sys.stderr):
            ids, mask = _pad(batch)
            # logits_to_keep=1: lm_head is not quantized, so full-vocabulary logits would be wasted work
            m(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=1)

    with contextlib.redirect_stdout(sys.stderr):  # modelopt prints progress; stdout belongs to --json
        mtq.quantize(model, fp8_config(kv_cache_fp8), forward_loop)
    return model


def export_checkpoint(model, out_dir: Path, dtype: str) -> None:
    """modelopt's unified HF export, in the build dtype (the export does not cast float32 leftovers:
    a model calibrated in float32 would keep float32 norms and embeddings)."""
    import torch
    from modelopt.torch.export import export_hf_checkpoint

    model.to(getattr(torch, dtype))
    with contextlib.redirect_stdout(sys.stderr):
        export_hf_checkpoint(model, export_dir=str(out_dir))


def _pad(batch: list[list[int]]):
    """Right-pad a batch (with id 0) and mask the padding; batch_size 1 (the default) never pads."""
    import torch

    width = max(map(len, batch))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in batch])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
    return ids, mask


# --- calibration data -----------------------------------------------------------------------------------

def calibration_batches(calibration: CalibrationSettings, tokenizer) -> list[list[list[int]]]:
    """num_samples token-id samples (each cut at max_seq_len), chosen by seed, grouped in batch_size."""
    import random

    from trtbuild.data import encode_sample

    samples = load_calibration_samples(calibration)
    random.Random(calibration.seed).shuffle(samples)
    ids = [encode_sample(tokenizer, s)[: calibration.max_seq_len] for s in samples[: calibration.num_samples]]
    ids = [row for row in ids if len(row) > 1]
    if not ids:
        raise TrtbuildError(f"calibration dataset {calibration.dataset!r} gave no usable samples; "
                            "pass a file with text")
    return [ids[i: i + calibration.batch_size] for i in range(0, len(ids), calibration.batch_size)]


def load_calibration_samples(calibration: CalibrationSettings) -> list[dict]:
    """"builtin" (the bundled corpus), a local .txt/.jsonl file, or a hub dataset name."""
    from trtbuild.data import corpus_samples, read_samples

    dataset = str(calibration.dataset)
    if dataset == "builtin":
        return corpus_samples()
    path = Path(dataset).expanduser()
    if path.is_file():
        return read_samples(path)
    if path.suffix in LOCAL_SUFFIXES or dataset.startswith((".", "/", "~")):
        raise TrtbuildError(f"calibration file {dataset} not found; pass an existing .txt/.jsonl file or 'builtin'")
    return [{"text": t} for t in _hub_dataset(dataset, calibration.num_samples)]


def calibration_fingerprint(dataset: str) -> str:
    """What identifies the calibration data for the cache key: the content hash of a local file or of
    the bundled corpus; a hub dataset by its name."""
    from trtbuild.data import corpus_hash

    if dataset == "builtin":
        return corpus_hash()
    path = Path(dataset).expanduser()
    return sha256_file(path) if path.is_file() else hashlib.sha256(f"hub:{dataset}".encode()).hexdigest()


def _hub_dataset(name: str, num_samples: int) -> list[str]:
    try:
        import datasets  # noqa: F401  (optional: only for calibration sets on the hub)
    except ImportError:
        raise TrtbuildError(f"calibration dataset {name!r} is on the hub and needs the `datasets` package: "
                            "pip install datasets, or pass a local .txt/.jsonl file (or 'builtin')") from None
    from modelopt.torch.utils.dataset_utils import get_dataset_samples

    try:
        with contextlib.redirect_stdout(sys.stderr):
            return get_dataset_samples(name, num_samples)
    except Exception as exc:  # offline, unknown name, gated: datasets raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrtbuildError(f"cannot load calibration dataset {name!r} from the hub ({first}); "
                            "pass a local .txt/.jsonl file or 'builtin'") from None


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
