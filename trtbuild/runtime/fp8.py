"""FP8 numerics for the torch backend: run a modelopt FP8 checkpoint the way FP8 hardware sees it.

The fp8 / fp8-kv8 engine directories hold modelopt's unified Hugging Face export: each quantized
Linear has a float8_e4m3fn `weight` with float32 scalar `weight_scale` and `input_scale` (both amax / 448),
and with an FP8 KV cache each attention also has `k_proj.k_scale` and `v_proj.v_scale`. transformers does
not understand that format (it loads the raw fp8 bytes and drops the scales), so we read the tensors
ourselves and apply the scales where an FP8 GEMM / FP8 KV cache would:

    y = (round_fp8(x / input_scale) * input_scale) @ (w_fp8 * weight_scale).T
    cache = round_fp8(k / k_scale)      # keys after RoPE, values as they are; read back * k_scale

round_fp8 is round-to-nearest-even to E4M3 with saturation at +-448 (static scales can be exceeded by
inputs the calibration never saw; a real FP8 GEMM saturates too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8 = torch.float8_e4m3fn


def round_fp8(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """x / scale rounded to float8_e4m3fn, saturating at +-448."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def fake_quant(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """The value an FP8 tensor with this scale holds for x, in x's dtype."""
    return (round_fp8(x, scale).float() * scale).to(x.dtype)


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in FP8 and whose input is rounded to FP8 with a static scale."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor,
                 bias: torch.Tensor | None = None):
        super().__init__()
        if weight.dtype != FP8:
            raise ValueError(f"FP8Linear needs a float8_e4m3fn weight, got {weight.dtype}")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale.float().reshape(()))
        self.register_buffer("input_scale", input_scale.float().reshape(()))
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Dequantize on the fly: memory holds FP8 weights only; the product of FP8 values with fp32
        # accumulation is what the FP8 GEMM computes before it applies the two scales.
        w = (self.weight.float() * self.weight_scale).to(x.dtype)
        return F.linear(fake_quant(x, self.input_scale), w, self.bias)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, weight_scale={self.weight_scale.item():.3g}, "
                f"input_scale={self.input_scale.item():.3g}")


def quantized_linear_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Module names of the Linears the checkpoint stores in FP8 ('model.layers.0.self_attn.q_proj', ...)."""
    return sorted(name.removesuffix(".weight_scale") for name in tensors if name.endswith(".weight_scale"))


def install_fp8_linears(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Replace every quantized Linear of `model` by an FP8Linear built from the checkpoint tensors.

    Consumes the tensors it uses from `tensors` (what remains is loaded the ordinary way) and returns the
    module names it replaced."""
    names = quantized_linear_names(tensors)
    for name in names:
        weight = tensors.pop(f"{name}.weight")
        missing = [f"{name}.{s}" for s in ("weight_scale", "input_scale") if f"{name}.{s}" not in tensors]
        if missing or weight.dtype != FP8:
            raise ValueError(f"{name}: expected a float8_e4m3fn weight with weight_scale and input_scale, "
                             f"got {weight.dtype}{' without ' + ', '.join(missing) if missing else ''}")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if not isinstance(getattr(parent, child, None), nn.Linear):
            raise ValueError(f"{name} is not a Linear of this model")
        layer = FP8Linear(weight, tensors.pop(f"{name}.weight_scale"), tensors.pop(f"{name}.input_scale"),
                          tensors.pop(f"{name}.bias", None))
        setattr(parent, child, layer)
    return names


def kv_cache_scales(tensors: dict[str, torch.Tensor], num_layers: int) -> torch.Tensor | None:
    """[num_layers, 2] float32 (k_scale, v_scale) per layer when the checkpoint has an FP8 KV cache, else None.

    Consumes the scale tensors from `tensors`."""
    keys = [(f"model.layers.{i}.self_attn.k_proj.k_scale", f"model.layers.{i}.self_attn.v_proj.v_scale")
            for i in range(num_layers)]
    present = [k in tensors and v in tensors for k, v in keys]
    if not any(present):
        return None
    if not all(present):
        missing = [i for i, ok in enumerate(present) if not ok]
        raise ValueError(f"FP8 KV cache scales are missing for layer(s) {missing}")
    return torch.tensor([[float(tensors.pop(k)), float(tensors.pop(v))] for k, v in keys], dtype=torch.float32)
