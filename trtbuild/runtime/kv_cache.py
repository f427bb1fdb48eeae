"""The torch engine's KV cache: one slot per running request, preallocated (see trtbuild.runtime.torch_runtime)."""

from __future__ import annotations

import torch

from trtbuild.runtime.fp8 import FP8, round_fp8


class KVCache:
    """Keys and values of `batch` sequences of up to `max_len` tokens, per layer; FP8 when scales are given."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: str, fp8_scales: torch.Tensor | None = None):
        self.dtype, self.scales = dtype, fp8_scales
        shape = (layers, batch, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=FP8 if fp8_scales is not None else dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, upto: int, run: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, kv_heads, n, head_dim] at `positions` [B, n] of `slots` [B]; return this layer's
        keys and values of those slots for positions [0, upto) as [B, kv_heads, upto, head_dim]: a view when
        `run` says the slots are consecutive (no copy), else a gathered copy."""
        if self.scales is not None:
            k, v = round_fp8(k, self.scales[layer, 0]), round_fp8(v, self.scales[layer, 1])
        # Advanced indices on dims 0 and 2 put the indexed dims first: the target is [B, n, kv_heads, hd].
        self.k[layer][slots[:, None], :, positions] = k.transpose(1, 2)
        self.v[layer][slots[:, None], :, positions] = v.transpose(1, 2)
        if run is not None:
            keys, values = self.k[layer][run, :, :upto], self.v[layer][run, :, :upto]
        else:
            keys, values = self.k[layer][slots, :, :upto], self.v[layer][slots, :, :upto]
        if self.scales is not None:
            keys = keys.to(self.dtype) * self.scales[layer, 0].to(self.dtype)
            values = values.to(self.dtype) * self.scales[layer, 1].to(self.dtype)
        return keys, values
