"""Memory plan of a build on a GPU, before building: do the weights fit, how much KV cache is left.

Users hit out-of-memory at build and run time with large max_batch_size / max_num_tokens (TRT-LLM #1543,
#2139). This is the arithmetic TensorRT-LLM's runtime does, done up front:

    weights      = linear params x (2 B fp16/bf16 | 1 B fp8) + embeddings, lm_head, norms x 2 B
    activations  = max_num_tokens x (3 x intermediate + (heads + 2 x kv_heads) x head_dim + 4 x hidden) x 2 B
                   + max_batch_size x vocab x 4 B (fp32 logits of the last token of each sequence)
                   (the largest per-layer tensors of a context pass over max_num_tokens tokens: MLP gate/up
                   and its product, QKV, and a few hidden-state buffers; TensorRT reuses them across layers)
    reserve      = 1 GiB for the CUDA context, cuBLAS and TensorRT workspaces (an estimate)
    KV cache     = free_gpu_memory_fraction x (GPU memory - weights - activations - reserve)
    per token    = 2 (K, V) x layers x kv_heads x head_dim x (2 B | 1 B fp8)   -> 128 KiB / 64 KiB for the 7B

With tensor parallelism weights, activations and KV heads are split over tp_size GPUs; every number here is
per GPU. Verdicts: refuse when the weights do not fit or not even one max_seq_len sequence does; warn when
max_batch_size x max_seq_len tokens of KV cache do not fit (requests then queue for cache blocks).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from trtbuild import DEFAULT_MODEL, REAL_MODEL
from trtbuild.errors import TrtbuildError

GiB = 1 << 30
MiB = 1 << 20
RESERVE_BYTES = 1 * GiB
DEFAULT_GPU = "H100-SXM-80GB"
BUNDLED_CONFIGS = {REAL_MODEL: "mistral-7b-instruct-v0.3.config.json"}


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # total device memory as nvidia-smi reports it
    bandwidth_bytes_per_s: float  # HBM bandwidth, datasheet
    match: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name() that identify it


GPUS = {
    "H100-SXM-80GB": GPU("H100-SXM-80GB", 81559 * MiB, 3.35e12, ("H100 80GB HBM3", "H100 SXM")),
    "H100-PCIe-80GB": GPU("H100-PCIe-80GB", 81559 * MiB, 2.0e12, ("H100 PCIe",)),
    "H200": GPU("H200", 143771 * MiB, 4.8e12, ("H200",)),
}


def get_gpu(name: str) -> GPU:
    for key, gpu in GPUS.items():
        if name.lower() == key.lower():
            return gpu
    raise TrtbuildError(f"unknown GPU {name!r}; pass one of: {', '.join(GPUS)}")


def gpu_from_device_name(device_name: str) -> GPU | None:
    """The table entry for a CUDA device name such as 'NVIDIA H100 80GB HBM3', if there is one."""
    return next((gpu for gpu in GPUS.values() if any(m in device_name for m in gpu.match)), None)


def decode_tokens_per_s_bound(weight_bytes: float, gpu: str | GPU = DEFAULT_GPU) -> float:
    """Upper bound on batch-1 decode speed: every token reads all weights once from HBM."""
    gpu = gpu if isinstance(gpu, GPU) else get_gpu(gpu)
    return gpu.bandwidth_bytes_per_s / weight_bytes


# --- the model ------------------------------------------------------------------------------------

def load_model_config(model: str | Path, ws=None, revision: str | None = None) -> dict:
    """config.json of a model: bundled for the real 7B (works offline), the builtin model's from its
    recipe, read from a local directory, else resolved through the workspace (the builtin tiny model, or a hub download)."""
    if str(model) in BUNDLED_CONFIGS:
        return json.loads(resources.files("trtbuild.data").joinpath(BUNDLED_CONFIGS[str(model)]).read_text())
    if str(model) == DEFAULT_MODEL:  # its architecture is fixed by the recipe: no need to create it
        from trtbuild.tiny_model import TinyRecipe, mistral_config

        return mistral_config(TinyRecipe()).to_dict()
    path = Path(model).expanduser()
    if not path.is_dir():
        if ws is None:
            raise TrtbuildError(f"model {model!r} is not a local directory; fetch it first (`trtbuild fetch`)")
        from trtbuild.models import resolve_source

        path = resolve_source(ws, str(model), revision, progress=False).path
    config = path / "config.json"
    if not config.is_file():
        raise TrtbuildError(f"{path} has no config.json: not a Hugging Face checkpoint")
    return json.loads(config.read_text())


@dataclass
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        try:
            heads = config["num_attention_heads"]
            return cls(hidden=config["hidden_size"], layers=config["num_hidden_layers"], heads=heads,
                       kv_heads=config.get("num_key_value_heads") or heads,
                       head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                       intermediate=config["intermediate_size"], vocab=config["vocab_size"],
                       tied_embeddings=bool(config.get("tie_word_embeddings", False)))
        except KeyError as exc:
            raise TrtbuildError(f"model config lacks {exc.args[0]!r}: not a Mistral/Llama-style config") from None

    @property
    def linear_params(self) -> int:
        """Parameters of the quantizable linears (q, k, v, o, gate, up, down) over all layers."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    @property
    def other_params(self) -> int:
        """Embeddings, lm_head (unless tied) and RMSNorm weights: kept in the model dtype under FP8."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.hidden * (2 * self.layers + 1)


# --- the plan -------------------------------------------------------------------------------------

@dataclass
class MemoryPlan:
    model: str
    gpu: str
    variant: str
    weights: str  # dtype of the quantized linears
    kv_cache: str  # KV cache dtype
    tp_size: int
    params: int
    weight_bytes: int
    activation_bytes: int
    reserve_bytes: int
    gpu_memory_bytes: int
    free_gpu_memory_fraction: float
    kv_cache_bytes: int
    kv_bytes_per_token: int
    kv_tokens: int
    max_batch_size: int
    max_seq_len: int
    requested_tokens: int  # max_batch_size x max_seq_len
    max_full_sequences: int  # sequences of max_seq_len tokens whose KV cache fits at once
    servable: bool
    decode_tokens_per_s_bound: float  # batch 1, bandwidth-bound
    verdict: str  # ok | warn | refuse
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MemoryPlan:
        return cls(**data)

    def summary(self) -> str:
        gib = lambda n: f"{n / GiB:.2f} GiB"  # noqa: E731
        lines = [
            f"{self.variant} on {self.gpu}: {self.verdict.upper()}  ({self.params / 1e9:.2f} B params, tp {self.tp_size})",
            f"  weights {gib(self.weight_bytes)} ({self.weights}), activations {gib(self.activation_bytes)}, "
            f"reserve {gib(self.reserve_bytes)} of {gib(self.gpu_memory_bytes)}",
            f"  KV cache {gib(self.kv_cache_bytes)} at {self.kv_bytes_per_token / 1024:g} KiB/token ({self.kv_cache}) "
            f"= {self.kv_tokens:,} tokens = {self.max_full_sequences} x {self.max_seq_len}-token sequences",
            f"  batch {self.max_batch_size} x {self.max_seq_len} = {self.requested_tokens:,} tokens: "
            f"{'servable' if self.servable else 'NOT fully servable'}; "
            f"batch-1 decode bound {self.decode_tokens_per_s_bound:,.0f} tok/s",
        ]
        return "\n".join(lines + [f"  {reason}" for reason in self.reasons])


def plan_memory(model_config: dict, settings, gpu: str = DEFAULT_GPU, free_gpu_memory_fraction: float = 0.9,
                model: str = "") -> MemoryPlan:
    """The memory budget of one variant on one GPU (see the module docstring for every formula)."""
    if not 0 < free_gpu_memory_fraction <= 1:
        raise TrtbuildError(f"free_gpu_memory_fraction must be in (0, 1], got {free_gpu_memory_fraction}")
    device = get_gpu(gpu)
    shape = ModelShape.from_config(model_config)
    tp = settings.tp_size
    dtype_bytes = 2  # float16 / bfloat16
    linear_bytes = 1 if settings.is_fp8 else dtype_bytes
    kv_bytes = 1 if settings.kv_cache_dtype == "fp8" else dtype_bytes

    weight_bytes = (shape.linear_params * linear_bytes + shape.other_params * dtype_bytes) // tp
    per_token = shape.hidden * 4 + shape.intermediate * 3 + (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    activation_bytes = (settings.max_num_tokens * per_token * dtype_bytes // tp
                        + settings.max_batch_size * shape.vocab * 4)
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * kv_bytes // tp
    free = device.memory_bytes - weight_bytes - activation_bytes - RESERVE_BYTES
    kv_cache_bytes = int(max(free, 0) * free_gpu_memory_fraction)
    block = int(settings.plugins.get("tokens_per_block", 32))  # the cache is allocated in whole blocks
    kv_tokens = kv_cache_bytes // kv_per_token // block * block
    requested = settings.max_batch_size * settings.max_seq_len
    full_sequences = kv_tokens // settings.max_seq_len

    reasons, verdict = [], "ok"
    if free <= 0:
        verdict = "refuse"
        reasons.append(f"weights + activations + reserve need {(device.memory_bytes - free) / GiB:.1f} GiB, more "
                       f"than the {device.memory_bytes / GiB:.1f} GiB of one {device.name}: use FP8, a larger "
                       "GPU, tp_size > 1, or a smaller max_num_tokens")
    elif full_sequences < 1:
        verdict = "refuse"
        reasons.append(f"the KV cache holds {kv_tokens:,} tokens, less than one max_seq_len ({settings.max_seq_len}) "
                       "sequence: lower max_seq_len or max_num_tokens, or use an FP8 KV cache")
    elif kv_tokens < requested:
        verdict = "warn"
        reasons.append(f"max_batch_size x max_seq_len = {requested:,} tokens but the KV cache holds {kv_tokens:,} "
                       f"({full_sequences} full sequences): longer batches queue for cache blocks; lower "
                       "max_batch_size or max_seq_len, or use the FP8 KV cache (fp8-kv8)")
    return MemoryPlan(
        model=model, gpu=device.name, variant=settings.variant,
        weights="float8_e4m3fn" if settings.is_fp8 else settings.dtype,
        kv_cache="float8_e4m3fn" if kv_bytes == 1 else settings.dtype, tp_size=tp,
        params=shape.linear_params + shape.other_params, weight_bytes=weight_bytes,
        activation_bytes=activation_bytes, reserve_bytes=RESERVE_BYTES, gpu_memory_bytes=device.memory_bytes,
        free_gpu_memory_fraction=free_gpu_memory_fraction, kv_cache_bytes=kv_cache_bytes,
        kv_bytes_per_token=kv_per_token, kv_tokens=kv_tokens, max_batch_size=settings.max_batch_size,
        max_seq_len=settings.max_seq_len, requested_tokens=requested, max_full_sequences=full_sequences,
        servable=kv_tokens >= requested, decode_tokens_per_s_bound=decode_tokens_per_s_bound(weight_bytes, device),
        verdict=verdict, reasons=reasons,
    )
