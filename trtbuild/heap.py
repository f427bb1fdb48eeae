"""Keep Python's garbage collector off a busy event loop: what is loaded is frozen out of its sight and
collections come less often. The server does it once it has its engine; the bench client for each load.
The server also hands the GIL to its engine's thread sooner (prefer_engine_thread)."""

from __future__ import annotations

import contextlib
import gc
import sys

# Young-generation threshold and the older generations' multipliers (CPython: 700, 10, 10).
# Stub benchmark (bench/stub_engine.py, 256 streams of a 10 ms step, 65,536 tokens, GC CPU measured with
# gc.callbacks): the defaults ran ~320 young, 28 middle and 3 full collections, the full ones ~25 ms of CPU
# each, a stall of every stream longer than the 20 ms an ITL p99 of 2 steps allows; 3.1 us of GC CPU a
# token. With these: ~20 young collections of ~4 ms, 1 middle, no full one; 1.3 us a token.
GC_THRESHOLD = (20_000, 20, 100)


def freeze_heap() -> None:
    """Move everything loaded so far (torch, transformers, the model's modules: millions of objects) out
    of the garbage collector's sight, as vLLM's server does: full collections triggered by per-token
    garbage no longer rescan it (they took ~13% of a busy server's CPU); then collect less often
    (GC_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    if gc.get_threshold()[0] < GC_THRESHOLD[0]:  # never lower what the operator set (PYTHON* env, a wrapper)
        gc.set_threshold(*GC_THRESHOLD)


@contextlib.contextmanager
def frozen_heap():
    """freeze_heap() for a block, then the collector as it was. The bench client at 256 streams (64-token
    outputs, 1,024 requests) otherwise ran one full collection of 50-70 ms mid-load, during which no
    chunk is read or stamped."""
    old = gc.get_threshold()
    freeze_heap()
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


# A thread that wants the GIL waits sys.getswitchinterval() (CPython: 5 ms) before the holder is asked to
# drop it. The engine's step thread wants it once a step, often while the event loop holds it. Stub
# benchmark (bench/bench_serving_path.py, 256 streams, 10 ms steps), 3 paired runs: at 5 ms, step lateness
# p90 0.7-5.9 ms and ITL p99 1.83-2.87 steps; at 1 ms, p90 0.5-1.2 ms and 1.65-1.74 steps; CPU a token
# within the noise.
ENGINE_SWITCH_S = 0.001


def prefer_engine_thread() -> None:
    """Let the engine's thread take the GIL within ENGINE_SWITCH_S of asking (never raises a lower setting)."""
    if sys.getswitchinterval() > ENGINE_SWITCH_S:
        sys.setswitchinterval(ENGINE_SWITCH_S)
