"""The vocabulary projection of the torch engine on the CPU, in blocks that threads share (see LMHead)."""

from __future__ import annotations

from typing import Callable

import torch

from trtbuild.runtime.draw import COLUMNS
from trtbuild.runtime.native import cpu_kernels
from trtbuild.runtime.split import SplitRunner


class LMHead:
    """The vocabulary projection [..., H] -> [..., V] (no bias): the largest matmul of a small model.

    On the CPU in float32, nn.Linear (MKL sgemm/sgemv against the [V, H] weight) is slow for this shape
    on AMD EPYC, and its cost grows ~2x from 1 to 8 rows. Measured with one thread, H 256, V 32768, CPU ms:
    rows      1     2     4     8    32
    F.linear  3.6   6.4   9.2   9.3  17.8   (MKL, weight [V, H])
    x @ W^T   1.4   2.4   8.1   9.9  16.8   (MKL, weight pre-transposed to a contiguous [H, V])
    oneDNN    2.4   2.6   3.6   4.0   9.1   (weight packed once for oneDNN's blocked GEMM)
    So one row (a batch-1 decode step: a GEMV, memory-bound) reads a contiguous [H, V] copy, and more rows
    use the oneDNN-packed weight (compute-bound from ~4 rows: 134 MFLOP at 8 rows).
    Where the C kernels build (trtbuild.runtime.native), a C kernel takes every row count instead
    (lm_head_kernel.c), from a copy packed in panels of 8 columns. The whole head (H 256, V 32768, one thread,
    weights from memory), ms:
    rows      1     8     32
    C         1.11  2.79  8.59
    oneDNN    2.31  3.83  8.71
    MKL x@W^T 1.21  4.86  9.58
    and a row's logits are then the same bits at any batch size (the kernel sums every dot product in one
    order, whatever the tile), where oneDNN's and MKL's kernels differ between 1 row and 8.
    With a runner, the copies are kept per block of BLOCK_COLUMNS vocabulary columns, which the engine thread and
    the runner's helpers share (trtbuild.runtime.split): one core's FMA units bound the GEMM and one core's
    memory bandwidth the GEMV, so a second core speeds up both (2-core EPYC, wall ms, one thread vs two:
    1 row 1.73 -> 1.36, 8 rows 5.56 -> 3.53, 32 rows 10.8 -> 7.2). A block is the same kernel over the same
    data whichever thread runs it, so the logits do not depend on which thread ran what.
    Elsewhere (CUDA, no oneDNN, other dtypes) the module's own weight, whole.
    Cost: an LM-head-sized copy of the weight in CPU memory (32 MB for the tiny model; two without the C
    kernel, one for MKL's GEMV and one for oneDNN)."""

    BLOCK_COLUMNS = COLUMNS  # the plain draw's block too, so it can run on each block as it is computed

    def __init__(self, linear: torch.nn.Linear, runner: SplitRunner | None = None):
        self.linear = linear
        weight = linear.weight.detach()
        self.by_column = self.packed = self.panels = self.runner = None
        # built here, at engine load, if not yet (~0.2 s), not inside the first step (the draw uses them too)
        self.kernels = cpu_kernels() if weight.device.type == "cpu" else None
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and linear.bias is None:
            # one block without a runner: a single kernel call, no concatenation
            blocks = weight.split(self.BLOCK_COLUMNS if runner else weight.shape[0])
            if self.kernels is not None and all(len(block) % 8 == 0 for block in blocks):
                # [V_block, H] -> [V_block / 8, H, 8]: panel p holds columns 8p .. 8p + 7, k-major
                self.panels = [block.reshape(-1, 8, block.shape[1]).transpose(1, 2).contiguous() for block in blocks]
            else:
                self.by_column = [block.t().contiguous() for block in blocks]
                if torch.backends.mkldnn.is_available():
                    self.packed = [torch.ops.mkldnn._reorder_linear_weight(block.contiguous()) for block in blocks]
            self.runner = runner if len(blocks) > 1 else None

    @property
    def block_count(self) -> int:
        """How many blocks of columns the projection runs in (0: the module's own weight, whole)."""
        return len(self.panels or self.by_column or ())

    @property
    def blocked(self) -> bool:
        """The projection runs in blocks of BLOCK_COLUMNS on the runner: blocks(x, then) can fuse work."""
        return self.runner is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.by_column is None and self.panels is None:
            return self.linear(x)
        out = self.blocks(x)
        out = out[0] if len(out) == 1 else torch.cat(out, dim=1)
        return out.view(*x.shape[:-1], out.shape[-1])

    def blocks(self, x: torch.Tensor, then: Callable[[torch.Tensor, int], object] | None = None) -> list:
        """The logits of rows x [..., H] per block of columns, [rows, width] each, in column order; with
        `then`, then(block, first column) instead of each block, run by the thread that computed the block
        while it is in that core's cache (it must not change shared state: see SplitRunner)."""
        rows = x.reshape(-1, x.shape[-1])
        if self.panels is not None:
            rows = rows.float().contiguous()  # the kernel reads float32 rows by address
            project = lambda i: self._c_block(rows, i)  # noqa: E731
        elif rows.shape[0] == 1 or self.packed is None:
            project = lambda i: rows @ self.by_column[i]  # noqa: E731
        else:
            project = lambda i: torch.ops.mkldnn._linear_pointwise(rows, self.packed[i], None, "none", [None], "")  # noqa: E731
        piece = project if then is None else (lambda i: then(project(i), i * self.BLOCK_COLUMNS))
        count = self.block_count
        return self.runner.map(piece, count) if self.runner else [piece(i) for i in range(count)]

    def _c_block(self, rows: torch.Tensor, i: int) -> torch.Tensor:
        panel = self.panels[i]
        out = torch.empty(rows.shape[0], panel.shape[0] * 8)
        self.kernels.lm_head_block(rows.data_ptr(), rows.shape[0], rows.shape[1], panel.data_ptr(), out.shape[1],
                                   out.data_ptr(), out.shape[1])
        return out
