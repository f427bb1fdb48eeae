"""Mistral in plain torch: the modules the torch runtime serves and the tiny model trains, and
load_checkpoint, which fills them from a Hugging Face checkpoint (plain, or modelopt's FP8 export).

Parameter names are transformers' MistralForCausalLM names (model.layers.0.self_attn.q_proj.weight, ...),
so a Hugging Face checkpoint loads as it is and FP8 linears replace the same Linears; the math is the
same (RMSNorm in float32, rotary embedding in float32, SiLU-gated MLP, grouped-query attention), so the
transformers reference still validates it (trtbuild.runtime.hf_reference, tests/test_runtime.py).

Why not transformers' own modules: importing its modeling code costs ~5 s of CPU per process (it pulls
torch._dynamo, torch.distributed and scipy), which every server, `trtbuild generate` and bench run paid
before its first token; the runtime needs the weights and a few pages of math, not the library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trtbuild.errors import TrtbuildError
from trtbuild.runtime.fp8 import install_fp8_linears, kv_cache_scales


@dataclass(frozen=True)
class MistralConfig:
    """What the forward needs from a checkpoint's config.json."""

    vocab_size: int = 32768
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "MistralConfig":
        """Checked: a model this forward would compute differently is an error, never a silent mismatch."""
        if raw.get("model_type") != "mistral":
            raise TrtbuildError(f"{where} holds a {raw.get('model_type', '?')} model; the torch backend runs Mistral")
        if raw.get("sliding_window"):
            raise TrtbuildError(f"{where}: sliding-window attention is not implemented by the torch backend")
        if raw.get("hidden_act", "silu") != "silu":
            raise TrtbuildError(f"{where}: hidden_act {raw['hidden_act']!r}; the torch backend implements silu")
        rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}  # transformers 5 nests rope_theta here
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise TrtbuildError(f"{where}: rope scaling {rope.get('rope_type', rope.get('type'))!r} is not "
                                "implemented by the torch backend")
        values = {f.name: raw[f.name] for f in fields(cls) if raw.get(f.name) is not None}
        values.setdefault("rope_theta", rope.get("rope_theta", cls.rope_theta))
        if "head_dim" not in values:
            values["head_dim"] = raw["hidden_size"] // raw["num_attention_heads"]
        return cls(**values)

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> "MistralConfig":
        path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TrtbuildError(f"{path}: cannot read the model config ({exc}); rebuild the engine") from None
        return cls.from_dict(raw, str(path))


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos and sin of each position's rotation angles, computed in float32 (as transformers does)."""

    def __init__(self, config: MistralConfig):
        super().__init__()
        exponents = torch.arange(0, config.head_dim, 2, dtype=torch.int64, device="cpu").float() / config.head_dim
        self.register_buffer("inv_freq", 1.0 / (config.rope_theta ** exponents), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, n] -> cos, sin [B, n, head_dim] in x's dtype."""
        angles = positions[..., None].float() * self.inv_freq.to(x.device)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q [B, heads, n, d] and k [B, kv_heads, n, d] by cos, sin [B, n, d] (rotate-half layout)."""
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class Attention(nn.Module):
    def __init__(self, config: MistralConfig):
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, head_dim
        self.q_proj = nn.Linear(hidden, self.num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * head_dim, hidden, bias=False)

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """h [B, n, H] -> q [B, heads, n, d], k and v [B, kv_heads, n, d], q and k rotated."""
        batch, n, _ = h.shape
        q = self.q_proj(h).view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        return q, k, v

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """The heads' outputs [B, heads, n, d] -> [B, n, H]."""
        batch, _, n, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, n, self.num_heads * self.head_dim))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention within the sequence (training; the runtime attends over its KV cache with qkv
        and output): causal, or where the boolean mask [B, 1, n, n] allows."""
        q, k, v = self.qkv(h, cos, sin)
        return self.output(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                          enable_gqa=True))


class MLP(nn.Module):
    def __init__(self, config: MistralConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: MistralConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MistralModel(nn.Module):
    def __init__(self, config: MistralConfig):
        super().__init__()
        # Left uninitialised: the weights come from a checkpoint (load_checkpoint builds on the meta device,
        # where nn.Embedding's own normal_ init would import torch._dynamo: ~1.8 CPU-s per server start)
        # or from transformers' initialisation (the tiny model's training).
        vocab, hidden = config.vocab_size, config.hidden_size
        self.embed_tokens = nn.Embedding(vocab, hidden, _weight=torch.empty(vocab, hidden))
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, n, H] (training): of whole sequences from position 0 by default, or of
        tokens at `positions` [B, n] that attend where `mask` [B, 1, n, n] allows."""
        batch, n, _ = inputs_embeds.shape
        if positions is None:
            positions = torch.arange(n, device=inputs_embeds.device).expand(batch, n)
        cos, sin = self.rotary_emb(inputs_embeds, positions)
        x = inputs_embeds
        for layer in self.layers:
            x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, mask)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)


class MistralForCausalLM(nn.Module):
    def __init__(self, config: MistralConfig):
        super().__init__()
        self.config = config
        self.model = MistralModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


def load_checkpoint(model_dir: Path, device: str):
    """A Hugging Face Mistral checkpoint (plain or modelopt FP8 export) on `device` ->
    (model, FP8 KV scales or None, stored weight dtype, compute dtype, number of FP8 linears)."""
    from safetensors.torch import load_file

    config = MistralConfig.from_model_dir(model_dir)  # modelopt's quantization_config: fp8.py applies the scales
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    if "model.embed_tokens.weight" not in tensors:
        raise TrtbuildError(f"{model_dir} has no model weights (model.embed_tokens.weight); rebuild the engine")
    weight_dtype = tensors["model.embed_tokens.weight"].dtype
    dtype = weight_dtype if device.startswith("cuda") else torch.float32
    with torch.device("meta"):  # no memory for weights that the checkpoint replaces next
        model = MistralForCausalLM(config)
    fp8_layers = install_fp8_linears(model, tensors)
    kv_scales = kv_cache_scales(tensors, config.num_hidden_layers)
    if config.tie_word_embeddings and "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False,
                                                assign=True)
    fp8_buffers = {f"{n}.{s}" for n in fp8_layers for s in ("weight", "weight_scale", "input_scale")}
    still_empty = [n for n, p in model.named_parameters() if p.is_meta]
    if unexpected or still_empty:
        raise TrtbuildError(f"{model_dir}: checkpoint does not match the model (unexpected {unexpected[:3]}, "
                            f"missing {still_empty[:3] or sorted(set(missing) - fp8_buffers)[:3]}); rebuild the engine")
    return model.to(device).eval(), kv_scales, weight_dtype, dtype, len(fp8_layers)
