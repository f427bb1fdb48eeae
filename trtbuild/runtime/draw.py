"""The plain sampled draw (temperature, no top-k/top-p) in blocks of vocabulary columns, so that it can run
on each block of the LM head's output while the block is still in the cache, on whichever thread computed
it (trtbuild.runtime.lm_head), instead of in passes over the whole [B, V] logits afterwards.

    draw = PlainDraw(temperatures, bans)                     # one step, rows that are all plain-sampled
    parts = [draw.block(logits[:, c:c + COLUMNS], c) for c in range(0, V, COLUMNS)]  # any thread, any order
    tokens, ok = draw.tokens(draw.join(parts), u)            # u [B]: each row's uniform in [0, 1)
    tokens, ok = draw.tokens(draw.whole(logits), u)          # the same numbers, logits given whole

Per block (it edits only the block it is given): the row's banned ids set to -inf, the block's max m_b,
p = 2 ** ((x - m_b) * log2(e) / T) in place (exp((x - m_b) / T), unnormalised; exp2 takes half of exp's
time), and the sum of every GROUP columns. Across blocks the sums are rescaled by 2 ** ((m_b - m) * log2(e)
/ T), m the row's max (the rescaling of an online softmax), so the draw is from exp((x - m) / T) up to float
rounding. The draw is an inverse CDF in two levels: the group sums in float64, then inside one group; no
sort. Every plain draw goes through these blocks (the LM head's, or the sampler's own on logits it got
whole), so a seeded request draws the same token from the same logits whichever path ran.

The per-block pass (max, exp2, group sums) is one call of a C kernel (draw_kernel.c, built by
trtbuild.runtime.native) on CPU float32 logits where it could be built; otherwise, and on other devices,
torch ops compute the same quantities (rounded differently: a machine's paths agree bit for bit, two
machines may not).
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import numpy as np
import torch

from trtbuild.runtime.native import cpu_kernels

COLUMNS = 4096  # a block: the LM head's unit of work (512 KB of float32 at 32 rows: it stays in L2)
GROUP = 256  # the draw's first level: sums of 256 columns
LOG2_E = 1.4426950408889634  # log2(e): exp(y) = 2 ** (y * LOG2_E)
NEG_INF = torch.tensor(float("-inf"))
assert COLUMNS % GROUP == 0  # a block is whole groups: draw_kernel.c numbers groups across blocks


class Drawn(NamedTuple):
    """A step's blocks, drawn from: probabilities (unnormalised, per block) in pieces that cover the
    vocabulary in order (all as wide as the first but the last), each block's max [B, blocks], and the
    sums of every GROUP columns [B, groups]."""

    probs: list[torch.Tensor]
    maxima: torch.Tensor
    sums: torch.Tensor


class PlainDraw:
    """One step's draw for B rows: temperatures [B] (> 0); bans: per row, token ids (< V) to exclude."""

    def __init__(self, temperatures: list[float], bans: list[list[int]] | None = None):
        self.scale = LOG2_E / np.array(temperatures, dtype=np.float64)[:, None]
        self._scale64 = torch.from_numpy(self.scale[:, 0].copy())  # for the C draw_tokens
        self._scale32 = torch.from_numpy(self.scale.astype(np.float32))
        # block -> (rows, columns in the block). Built in plain Python: a step bans a few ids a row (EOS and
        # the stop ids), and a dozen small torch ops here cost ~0.2 ms a step on the engine thread.
        by_block: dict[int, tuple[list[int], list[int]]] = {}
        for row, ids in enumerate(bans or ()):
            for token in ids:
                block, column = divmod(token, COLUMNS)
                rows, columns = by_block.setdefault(block, ([], []))
                rows.append(row)
                columns.append(column)
        self._bans = {block: (torch.tensor(rows), torch.tensor(columns)) for block, (rows, columns) in by_block.items()}
        self._kernels = cpu_kernels()  # C (trtbuild.runtime.native), or None: torch and numpy

    def _native(self, x: torch.Tensor) -> bool:
        return (self._kernels is not None and x.device.type == "cpu" and x.dtype == torch.float32
                and x.stride(-1) == 1)

    def _fused(self, x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The C kernel over x [B, w] (rows may be strided) in blocks of `block` columns: x becomes the
        probabilities -> (each block's max [B, blocks], group sums [B, ceil(w / GROUP)])."""
        rows, width = x.shape
        top = torch.empty(rows, -(-width // block))
        sums = torch.empty(rows, -(-width // GROUP))
        self._kernels.draw_blocks(x.data_ptr(), rows, width, x.stride(0), block, GROUP,
                                  self._scale32.data_ptr(), top.data_ptr(), sums.data_ptr())
        return top, sums

    def block(self, x: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, w]: the logits of columns first .. first + w (first a multiple of COLUMNS), edited in place
        -> (x as unnormalised probabilities, the block's max per row [B, 1], group sums [B, ceil(w / GROUP)])."""
        ban = self._bans.get(first // COLUMNS)
        if ban is not None:
            x.index_put_(ban, NEG_INF)
        return self._unbanned_block(x)

    def _unbanned_block(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._native(x):
            return x, *self._fused(x, x.shape[1])
        top = x.amax(-1, keepdim=True)
        x.sub_(top).mul_(self._scale32).exp2_()
        rows, width = x.shape
        full = width // GROUP * GROUP
        sums = x[:, :full].reshape(rows, -1, GROUP).sum(-1)
        if full < width:
            sums = torch.cat([sums, x[:, full:].sum(-1, keepdim=True)], dim=1)
        return x, top, sums

    def whole(self, x: torch.Tensor) -> Drawn:
        """join([block(x[:, c:c + COLUMNS], c) for every c]), as the same few ops over the whole of x [B, V]
        (edited in place): the same numbers, without a loop of small ops on one thread."""
        if not x.is_contiguous():
            x = x.contiguous()
        for block, (rows, columns) in self._bans.items():
            x.index_put_((rows, columns + block * COLUMNS), NEG_INF)
        if self._native(x):
            return Drawn([x], *self._fused(x, COLUMNS))
        batch, vocab = x.shape
        count = vocab // COLUMNS
        if not count:
            return self.join([self._unbanned_block(x)])
        blocks = x[:, :count * COLUMNS].view(batch, count, COLUMNS)
        top = blocks.amax(-1, keepdim=True)
        blocks.sub_(top).mul_(self._scale32[:, :, None]).exp2_()
        drawn = Drawn([x], top.view(batch, count), blocks.view(batch, count, -1, GROUP).sum(-1).view(batch, -1))
        if count * COLUMNS == vocab:
            return drawn
        _, tail_top, tail_sums = self._unbanned_block(x[:, count * COLUMNS:])  # a partial last block
        return Drawn([x], torch.cat([drawn.maxima, tail_top], 1), torch.cat([drawn.sums, tail_sums], 1))

    @staticmethod
    def join(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Drawn:
        """The results of block() for every block, in column order."""
        return Drawn([p for p, _, _ in parts], torch.cat([top for _, top, _ in parts], 1),
                     torch.cat([sums for _, _, sums in parts], 1))

    def tokens(self, drawn: Drawn, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (each row's token, whether its row had a usable distribution: rows that did not (NaN, or
        nothing allowed) take the most likely token instead). Few numpy calls: this runs after the LM head,
        when the engine thread's caches are cold and each call costs several times its warm time."""
        if self._native(drawn.probs[0]) and all(p.stride(1) == 1 for p in drawn.probs):
            return self._tokens_native(drawn, u)  # maxima and sums: contiguous, from join() or whole()
        maxima = drawn.maxima.numpy().astype(np.float64)
        with np.errstate(invalid="ignore"):  # -inf - -inf: a row or block with nothing allowed
            weight = np.exp2((maxima - maxima.max(1, keepdims=True)) * self.scale)
        sums = drawn.sums.numpy()
        scaled = sums * np.repeat(weight, COLUMNS // GROUP, axis=1)[:, :sums.shape[1]]  # by each block's weight
        if not np.isfinite(scaled.sum()):  # a NaN: nothing allowed in a block or a row, or a NaN logit
            scaled[~np.isfinite(scaled)] = 0.0  # such groups contribute nothing (a row of them falls back)
        cum = scaled.cumsum(1)
        total = cum[:, -1]
        target = u * total
        group = np.minimum((cum <= target[:, None]).sum(1), cum.shape[1] - 1)  # searchsorted, side right
        inner = np.zeros((len(u), GROUP + 1))  # [what comes before the chosen group, its 256 probabilities]
        probs = [p.numpy() for p in drawn.probs]
        width = probs[0].shape[1]  # every piece but the last
        for row, g in enumerate(group.tolist()):
            piece, start = divmod(g * GROUP, width)
            values = probs[piece][row, start:start + GROUP]
            inner[row, 1:len(values) + 1] = values
            if g:
                inner[row, 0] = cum[row, g - 1]
        rows = np.arange(len(u))
        inner[:, 1:] = inner[:, 1:].cumsum(1) * weight[rows, group * GROUP // COLUMNS][:, None]
        # float64 sums of float32 terms may round a hair past the group's total: stay inside the group
        rest = np.minimum(target - inner[:, 0], np.nextafter(inner[:, -1], 0.0))
        vocab = sum(p.shape[1] for p in probs)
        picked = np.minimum(group * GROUP + (inner[:, 1:] <= rest[:, None]).sum(1), vocab - 1)
        ok = total > 0
        if not ok.all():
            for row in np.flatnonzero(~ok).tolist():
                picked[row] = int(torch.nan_to_num(torch.cat([p[row] for p in drawn.probs])).argmax())
        return picked, ok

    def _tokens_native(self, drawn: Drawn, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """tokens() as one C call (draw_kernel.c: draw_tokens, the same float64 steps). Pointers from torch
        (data_ptr); numpy's .ctypes costs ~7 us an array."""
        rows, blocks = drawn.maxima.shape
        probs = drawn.probs
        picked, ok = torch.empty(rows, dtype=torch.int64), torch.empty(rows, dtype=torch.bool)
        u = torch.as_tensor(u, dtype=torch.float64).contiguous()  # held here: C reads it by address
        self._kernels.draw_tokens(
            rows, blocks, COLUMNS, drawn.sums.shape[1], GROUP, sum(p.shape[1] for p in probs),
            drawn.maxima.data_ptr(), drawn.sums.data_ptr(), (ctypes.c_void_p * len(probs))(*[p.data_ptr() for p in probs]),
            (ctypes.c_int64 * len(probs))(*[p.stride(0) for p in probs]), len(probs), probs[0].shape[1],
            self._scale64.data_ptr(), u.data_ptr(), picked.data_ptr(), ok.data_ptr())
        return picked.numpy(), ok.numpy()
