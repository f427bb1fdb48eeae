"""The torch runtime's C kernels (trtbuild/runtime/*.c) against the torch, oneDNN, MKL and numpy calls they
replace, on one thread, at the embedded model's shapes (issue 13: the tables in lm_head.py and in
docs/benchmarks.md, "Ninth pass").

    .venv/bin/python bench/bench_cpu_kernels.py [--hidden 256] [--vocab 32768] [--repeat 60]

1. The whole LM head (H x V float32, in blocks of 4096 columns as the engine runs it; the weights come from
   memory, as in a decode step): C panels, oneDNN's packed GEMM, MKL against a pre-transposed copy.
2. The plain draw at 8 rows: the pass over one block (max, exp2, group sums) and the draw across blocks.
Each figure is the 20th percentile of `--repeat` timings (contention only ever adds time).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def timed(fn, repeat: int) -> float:
    """ms, the 20th percentile of `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 20)) * 1e3


def head_table(hidden: int, vocab: int, repeat: int) -> None:
    from trtbuild.runtime.lm_head import LMHead

    linear = torch.nn.Linear(hidden, vocab, bias=False)
    head = LMHead(linear)  # C panels (one block) where the kernels build
    if head.panels is None:
        raise SystemExit("the C kernels did not build (see the log line above): nothing to compare")
    blocks = linear.weight.detach().split(LMHead.BLOCK_COLUMNS)
    panels = [b.reshape(-1, 8, hidden).transpose(1, 2).contiguous() for b in blocks]
    packed = [torch.ops.mkldnn._reorder_linear_weight(b.contiguous()) for b in blocks]
    by_column = [b.t().contiguous() for b in blocks]
    print(f"whole LM head, H {hidden} x V {vocab}, one thread, ms")
    print(f"{'rows':>5} {'C':>8} {'oneDNN':>8} {'MKL':>8}")
    for rows in (1, 8, 32):
        x = torch.randn(rows, hidden)
        outs = [torch.empty(rows, len(b)) for b in blocks]

        def c():
            for panel, out in zip(panels, outs):
                head.kernels.lm_head_block(x.data_ptr(), rows, hidden, panel.data_ptr(), out.shape[1],
                                           out.data_ptr(), out.shape[1])

        def onednn():
            for weight in packed:
                torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [None], "")

        def mkl():
            for weight in by_column:
                x @ weight

        print(f"{rows:>5} {timed(c, repeat):8.3f} {timed(onednn, repeat):8.3f} {timed(mkl, repeat):8.3f}")


def draw_table(vocab: int, repeat: int) -> None:
    import trtbuild.runtime.draw as draw_module
    from trtbuild.runtime.draw import COLUMNS, PlainDraw

    rows = 8
    x = torch.randn(rows, vocab) * 3
    u = np.random.default_rng(0).random(rows)
    native = PlainDraw([1.0] * rows, [[2]] * rows)
    kernels, draw_module.cpu_kernels = draw_module.cpu_kernels, lambda: None
    try:
        ops = PlainDraw([1.0] * rows, [[2]] * rows)
    finally:
        draw_module.cpu_kernels = kernels
    print(f"\nplain draw, {rows} rows, one thread, ms")
    print(f"{'':28} {'C':>8} {'torch/numpy':>12}")
    block = x[:, COLUMNS:2 * COLUMNS].clone()
    cells = [timed(lambda: draw.block(block, COLUMNS), repeat * 20) for draw in (native, ops)]
    print(f"{'a block of ' + str(COLUMNS) + ' columns':28} {cells[0]:8.3f} {cells[1]:12.3f}")
    cells = []
    for draw in (native, ops):
        drawn = draw.join([draw.block(x.clone()[:, c:c + COLUMNS], c) for c in range(0, vocab, COLUMNS)])
        cells.append(timed(lambda: draw.tokens(drawn, u), repeat * 20))
    print(f"{'the draw across blocks':28} {cells[0]:8.3f} {cells[1]:12.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--repeat", type=int, default=60)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with torch.inference_mode():
        head_table(args.hidden, args.vocab, args.repeat)
        draw_table(args.vocab, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
