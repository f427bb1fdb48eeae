"""Decode-step time of the torch engine at several batch sizes, greedy against sampled (issue 13).

    .venv/bin/python bench/bench_step.py --workspace WS --paired 100    # the targets: paired ratios, verdicts
    .venv/bin/python bench/bench_step.py --workspace WS [--engine fp16] [--batch 1,8,32] [--rounds 3]
    .venv/bin/python bench/bench_step.py --workspace WS --profile 8      # torch.profiler table of one batch

Targets (issue 13): a sampled (temperature 1.0) step <= 1.10x a greedy one at batch 8 and 32; the batch-8
step <= 2x the batch-1 step.

--paired ROUNDS reads each target as a ratio within ONE running batch: the engine's own decode step,
driven from this thread, alternates the two sides (sampled and greedy sampler states of the same requests;
or its first request alone and all 8) `--steps` steps at a time, order swapped every round. Each round
gives a ratio of the sides' median steps; the verdict takes the median over rounds and its distribution-free
95% interval (order statistics): met when the whole interval is at or under the target, missed when it is
all above, else inconclusive. On a shared VM the rounds below drift by +-0.15 between greedy and sampled
runs seconds apart; pairing step by step cancels that drift, and the interval says how sure the reading is.

Without --paired, a round submits `batch` requests at once (64-token prompts, `--tokens` output tokens
each, ignore_eos) and takes the step time from the engine's own token stamps: the median gap between
consecutive tokens of a request, over every request of the round (the prefill and first token excluded).
That is the whole engine loop as a server sees it (forward, sampling, the hand-off of every token to its
stream), not the forward alone. Modes alternate inside each round (greedy, sampled, sampled, greedy, ...);
each ratio is taken within a round, and the median is reported, with the floor (the fastest round of each
mode: contention only ever adds time) beside it, and the engine thread's CPU time per step, its step
helpers' included (their own clocks, time.pthread_getcpuclockid: the work done, which preemption by other
processes does not inflate). TRTBUILD_STEP_THREADS=1 runs the step on the engine thread alone (the default
shares the LM head with a second CPU where there is one), for an A/B of the split in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from bench_serving_path import host_probe_ms  # this directory (run as bench/bench_step.py)

MODES = {
    "greedy": dict(temperature=0.0),
    "sampled": dict(temperature=1.0),
    "top_k_p": dict(temperature=0.8, top_k=50, top_p=0.95),
    "penalties": dict(temperature=1.0, frequency_penalty=0.5, presence_penalty=0.5, repetition_penalty=1.1),
}


def prompts_for(tokenizer, count: int, length: int = 64) -> list[list[int]]:
    words = "the cat river market winter garden story music window light stone city".split()
    out = []
    for i in range(count):
        text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(length * 2))
        out.append(tokenizer.encode(text)[:length])
    return out


def params_for(mode: str, tokens: int, seed: int):
    """Exactly `tokens` output tokens (min_tokens bans EOS as a benchmark request does), seeded."""
    from trtbuild.runtime import SamplingParams

    return SamplingParams(max_tokens=tokens, min_tokens=tokens, ignore_eos=True, seed=seed, **MODES[mode])


def step_ms(engine, prompts, tokens: int, mode: str, seed: int) -> tuple[float, float]:
    """(wall ms, engine-thread CPU ms) of one decode step of this batch."""
    params = [params_for(mode, tokens, seed + i) for i in range(len(prompts))]
    # the CPU time of the engine thread and of its step helpers (TRTBUILD_STEP_THREADS), their own clocks
    runner = getattr(engine, "_runner", None)
    clocks = [time.pthread_getcpuclockid(t.ident) for t in [engine._thread, *(runner._threads if runner else [])]]
    cpu0 = sum(time.clock_gettime_ns(c) for c in clocks)
    streams = [engine.submit(p, sp) for p, sp in zip(prompts, params)]
    gaps = []
    for stream in streams:
        stream.result()
        stamps = [e.time_ns for e in stream.events if e.token_id >= 0]
        gaps += [b - a for a, b in zip(stamps[1:], stamps[2:])]  # decode steps only
    cpu = (sum(time.clock_gettime_ns(c) for c in clocks) - cpu0) / tokens  # per step (the prefill included)
    return statistics.median(gaps) / 1e6, cpu / 1e6


def running_batch(engine, prompts, mode: str, tokens: int, seed: int = 0) -> list:
    """Requests admitted and prefilled on the engine's own methods, driven from this thread (the engine
    thread sleeps meanwhile: nothing is queued), ready for engine._decode(); release() hands them back."""
    from trtbuild.runtime.torch_runtime import _Request

    reqs = [_Request(engine.new_stream(p, params_for(mode, tokens, seed + i))) for i, p in enumerate(prompts)]
    for req in reqs:
        engine._start(req)
    engine._prefill(reqs)
    return reqs


def release(engine, reqs) -> None:
    with engine._cv:  # the slots go back without waking the engine thread
        engine._free_slots = sorted([*engine._free_slots, *(r.slot for r in reqs)], reverse=True)
    for req in reqs:
        req.stream.finish("abort")


def profile(engine, prompts, tokens: int, mode: str) -> None:
    """The engine's decode step under torch.profiler (it records the thread that starts it: this one)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.set_num_threads(engine.threads)
    with torch.inference_mode():
        reqs = running_batch(engine, prompts, mode, tokens + 2)
        engine._decode(reqs)  # warm
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(tokens):
                engine._decode(reqs)
            took = (time.perf_counter() - start) / tokens * 1e3
        release(engine, reqs)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    print(f"{took:.2f} ms per step under the profiler")


# The paired reading of each target: (name, batch and mode of the numerator, of the denominator, target).
PAIRS = [("sampled / greedy, batch 8", (8, "sampled"), (8, "greedy"), 1.10),
         ("sampled / greedy, batch 32", (32, "sampled"), (32, "greedy"), 1.10),
         ("batch 8 / batch 1, greedy", (8, "greedy"), (1, "greedy"), 2.00)]


def paired(engine, prompts, top: tuple[int, str], bottom: tuple[int, str], rounds: int, steps: int) -> dict:
    """The ratio of two decode steps of ONE running batch, alternated `steps` steps at a time (order
    swapped every round), so that the host's drift, which moved the separate rounds' ratios by +-0.15 on
    this VM, hits both sides of every round alike. A side is (batch, mode): the first `batch` requests of
    the batch, each with its own sampler state for that mode (the same prompts and KV cache). Per round:
    the median step of each side, and their ratio; over rounds: the median ratio and its distribution-free
    95% interval (trtbuild/bench/stats.py: median_interval). A batch runs until its context is full, then
    a fresh one is prefilled for the rounds left."""
    import torch

    from trtbuild.bench import stats

    size = max(top[0], bottom[0])
    per_batch = (engine.info.max_seq_len - max(len(p) for p in prompts[:size]) - 1) // (2 * steps)
    if per_batch < 1:
        raise SystemExit(f"--steps {steps} outgrows the engine's {engine.info.max_seq_len}-token context")
    ratios, times = [], {top: [], bottom: []}
    torch.set_num_threads(engine.threads)
    with torch.inference_mode():
        while len(ratios) < rounds:
            tokens = 1 + per_batch * steps * 2  # the first request takes part in every step
            reqs = running_batch(engine, prompts[:size], "greedy", tokens)
            states = {mode: [engine._sampler.start(params_for(mode, tokens, i), r.prompt, row=r.slot)
                             for i, r in enumerate(reqs)] for mode in {top[1], bottom[1]}}
            for _ in range(min(per_batch, rounds - len(ratios))):
                took = {}
                for side in ((top, bottom) if len(ratios) % 2 == 0 else (bottom, top)):
                    batch, mode = side
                    for req, state in zip(reqs, states[mode]):
                        req.sampler = state
                    took[side] = []
                    for _ in range(steps):
                        start = time.perf_counter()
                        engine._decode(reqs[:batch])
                        took[side].append((time.perf_counter() - start) * 1e3)
                    times[side] += took[side]
                ratios.append(statistics.median(took[top]) / statistics.median(took[bottom]))
            release(engine, reqs)
    interval = stats.median_interval(ratios)
    return {"ratio": interval.mean, "low": interval.low, "high": interval.high, "rounds": rounds, "steps": steps,
            "ratios": ratios, "step_ms": {f"batch {b} {m}": statistics.median(times[(b, m)]) for b, m in times}}


def verdict(result: dict, target: float) -> str:
    """met when the whole interval is at or under the target, missed when it is all above: noise can flip
    neither; otherwise inconclusive (more rounds, or a quieter host)."""
    if result["high"] is None:
        return "too few rounds for an interval (6 at least)"
    if result["high"] <= target:
        return "met"
    return "missed" if result["low"] > target else "inconclusive"


def report_paired(engine, prompts, args) -> int:
    result = {"engine": engine.info.name, "step_threads": getattr(engine, "step_threads", None),
              "load_average": os.getloadavg(), "host_probe_ms": host_probe_ms(None), "pairs": {}}
    for name, top, bottom, target in PAIRS:
        pair = paired(engine, prompts, top, bottom, args.paired, args.steps)
        result["pairs"][name] = {**pair, "target": target, "verdict": verdict(pair, target)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['engine']}, {args.paired} rounds of {args.steps} + {args.steps} steps, "
          f"{result['step_threads']} step thread(s), load {result['load_average'][0]:.1f}, "
          f"host probe {result['host_probe_ms']} ms")
    for name, pair in result["pairs"].items():
        steps = ", ".join(f"{side} {ms:.2f} ms" for side, ms in pair["step_ms"].items())
        interval = f"[{pair['low']:.3f}, {pair['high']:.3f}]" if pair["high"] is not None else "[no interval]"
        print(f"{name:28s} {pair['ratio']:.3f} {interval}  target <= {pair['target']:.2f}: {pair['verdict']}  "
              f"({steps})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=None, help="trtbuild workspace [default: $TRTBUILD_WORKSPACE]")
    parser.add_argument("--engine", default="fp16", help="engine path, variant or key prefix")
    parser.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--modes", default="greedy,sampled", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="BATCH", help="profile one batch and exit")
    parser.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                        help="the targets' paired ratios over ROUNDS alternations, with intervals and verdicts")
    parser.add_argument("--steps", type=int, default=4, help="decode steps per side and round of --paired")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from trtbuild.runtime import load_engine
    from trtbuild.workspace import Workspace

    ws = Workspace(args.workspace)
    batches = [int(b) for b in args.batch.split(",")]
    modes = args.modes.split(",")
    with load_engine(ws.resolve_engine(args.engine)) as engine:
        if not hasattr(engine, "_decode"):
            raise SystemExit(f"bench_step times the torch engine's own decode step; {type(engine).__name__} has "
                             f"none: use `trtbuild bench` for this engine")
        paired_rows = [max(top[0], bottom[0]) for _, top, bottom, _ in PAIRS] if args.paired else []
        prompts = prompts_for(engine.tokenizer, max(batches + [args.profile] + paired_rows))
        step_ms(engine, prompts[:4], 8, "sampled", 0)  # warm-up
        if args.profile:
            for mode in modes:
                print(f"== {mode}, batch {args.profile}")
                profile(engine, prompts[:args.profile], args.tokens, mode)
            return 0
        if args.paired:
            return report_paired(engine, prompts, args)
        rows = {b: {m: [] for m in modes} for b in batches}
        cpus = {b: {m: [] for m in modes} for b in batches}
        for r in range(args.rounds):
            for b in batches:
                order = modes if r % 2 == 0 else modes[::-1]
                for mode in order:
                    wall, cpu = step_ms(engine, prompts[:b], args.tokens, mode, seed=r * 1000)
                    rows[b][mode].append(wall)
                    cpus[b][mode].append(cpu)
        result = {"engine": engine.info.name, "tokens": args.tokens, "rounds": args.rounds,
                  "threads": getattr(engine, "threads", None),
                  "step_threads": getattr(engine, "step_threads", None), "load_average": os.getloadavg(),
                  # the host's own speed (bench_serving_path.host_probe_ms): these ratios moved past their
                  # targets between two host states with the same code (docs/benchmarks.md, fifth pass)
                  "host_probe_ms": host_probe_ms(None), "batches": {}}
        for b in batches:
            med = {m: statistics.median(v) for m, v in rows[b].items()}
            ratios = {m: statistics.median(x / g for x, g in zip(rows[b][m], rows[b]["greedy"]))
                      for m in modes if m != "greedy" and "greedy" in modes}
            best = {m: min(v) for m, v in rows[b].items()}  # contention only ever adds time: the floor
            cpu = {m: statistics.median(v) for m, v in cpus[b].items()}
            result["batches"][b] = {"step_ms": med, "min_step_ms": best, "rounds_ms": rows[b], "cpu_ms": cpu,
                                    "cpu_ratio_to_greedy": {m: cpu[m] / cpu["greedy"] for m in ratios},
                                    "ratio_to_greedy": ratios,
                                    "min_ratio_to_greedy": {m: best[m] / best["greedy"] for m in ratios}}
        if "greedy" in modes and 1 in batches:
            base = result["batches"][1]["step_ms"]["greedy"]
            result["greedy_step_vs_batch1"] = {b: result["batches"][b]["step_ms"]["greedy"] / base for b in batches}
            base = result["batches"][1]["min_step_ms"]["greedy"]
            result["min_greedy_step_vs_batch1"] = {b: result["batches"][b]["min_step_ms"]["greedy"] / base
                                                   for b in batches}
            base = result["batches"][1]["cpu_ms"]["greedy"]
            result["cpu_greedy_step_vs_batch1"] = {b: result["batches"][b]["cpu_ms"]["greedy"] / base for b in batches}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['engine']}, {args.tokens} tokens, median of {args.rounds} rounds, "
              f"{result['step_threads']} step thread(s), load {os.getloadavg()}, "
              f"host probe {result['host_probe_ms']} ms")
        for b, row in result["batches"].items():
            cells = "  ".join(f"{m} {ms:6.2f} ms" for m, ms in row["step_ms"].items())
            ratios = "  ".join(f"{m}/greedy {x:.3f}" for m, x in row["ratio_to_greedy"].items())
            vs1 = result.get("greedy_step_vs_batch1", {}).get(b)
            print(f"batch {b:3d}: {cells}  {ratios}" + (f"  greedy vs batch 1: {vs1:.2f}x" if vs1 else ""))
            cells = "  ".join(f"{m} {ms:6.2f} ms" for m, ms in row["min_step_ms"].items())
            ratios = "  ".join(f"{m}/greedy {x:.3f}" for m, x in row["min_ratio_to_greedy"].items())
            vs1 = result.get("min_greedy_step_vs_batch1", {}).get(b)
            print(f"  floor:   {cells}  {ratios}" + (f"  greedy vs batch 1: {vs1:.2f}x" if vs1 else ""))
            cells = "  ".join(f"{m} {ms:6.2f} ms" for m, ms in row["cpu_ms"].items())
            ratios = "  ".join(f"{m}/greedy {x:.3f}" for m, x in row["cpu_ratio_to_greedy"].items())
            vs1 = result.get("cpu_greedy_step_vs_batch1", {}).get(b)
            print(f"  cpu:     {cells}  {ratios}" + (f"  greedy vs batch 1: {vs1:.2f}x" if vs1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
