"""Can the server keep up with a GPU? The real server over a stub engine (bench/stub_engine.py) at a fixed
step time, driven by `trtbuild bench --url` (issue 13, item 3).

    .venv/bin/python bench/bench_serving_path.py --step-ms 10 --streams 64,256 [--rounds 2]
    .venv/bin/python bench/bench_serving_path.py --streams 256 --base /tmp/perf-base    # A/B against a checkout

Each run starts the stub server (pinned to the first CPU) and runs `trtbuild bench --url` (pinned to the
others) in closed loop at `streams` concurrency, `--output-len` tokens per request (ignore_eos), so at
most `streams` tokens are due every step: ideal output tok/s = streams x 1000 / step_ms x out / (out + 1)
(each request also waits one step for its first token). Reported per run: output tok/s and its share of
the ideal, ITL p99 (per token, from continuous usage where the server sends it) in steps, TTFT p50, the
server's CPU time per token (/proc: what each token costs the serving process, the number that decides
how many streams one core can carry), the client's own verdict (event-loop lag), how late the stub's steps
started (the engine thread waits for the GIL) and a host probe (a fixed workload's time on the server's CPU:
on a shared VM the same code's CPU per token swings up to 2x with the host's load). With --base, rounds
alternate between this checkout and another (its trtbuild on PYTHONPATH, this stub engine), so both see
the same machine load. Target: >= 90% of ideal with ITL p99 < 2 steps at 10 ms and 256 streams.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time (user + system) of a process, or of one of its threads."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(cpus: set[int] | None):
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def host_probe_ms(cpus: set[int] | None) -> float:
    """A fixed Python workload (sorting and hashing 200k numbers: a few MB) timed on the server's CPU just
    before a run. On a shared VM the same code's CPU per token swings up to 2x with the host's other
    tenants; this says which state a run met (lower is faster; compare runs by it)."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        rng = random.Random(0)
        started = time.perf_counter()
        numbers = [rng.random() for _ in range(200_000)]
        table = {n: i for i, n in enumerate(sorted(numbers))}
        took = time.perf_counter() - started
        assert len(table) == len(numbers)
        return round(took * 1e3, 1)
    finally:
        os.sched_setaffinity(0, before)


def one_run(code: Path, step_ms: float, streams: int, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (None, None)
    host_ms = host_probe_ms(server_cpus)
    server = subprocess.Popen([sys.executable, str(HERE / "stub_engine.py"), "--port", "0", "--step-ms", str(step_ms),
                               "--max-batch-size", str(max(streams, 1))], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, preexec_fn=pin(server_cpus))
    try:
        info = json.loads(server.stdout.readline())
        with tempfile.TemporaryDirectory() as ws:
            cmd = [sys.executable, "-m", "trtbuild.cli", "--workspace", ws, "bench", "--url", info["url"],
                   "--model", info["model"], "--concurrency", str(streams), "--num-requests",
                   str(args.requests_per_stream * streams), "--warmup", str(streams), "--input-len", str(args.input_len),
                   "--output-len", str(args.output_len), "--json", "--no-progress", "--client-workers", args.client_workers]
            tid = info.get("engine_tid")  # older stubs do not say
            cpu0, engine0 = cpu_seconds(server.pid), cpu_seconds(server.pid, tid) if tid else None
            started = time.perf_counter()
            bench = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin(client_cpus),
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
            wall = time.perf_counter() - started
            cpu = cpu_seconds(server.pid) - cpu0
            engine_cpu = cpu_seconds(server.pid, tid) - engine0 if tid else None
        if bench.returncode not in (0, 1):
            raise SystemExit(f"trtbuild bench failed: {bench.stderr[-2000:]}")
        run = json.loads(bench.stdout)["runs"][0]
    finally:
        server.terminate()
        server.wait(timeout=30)
    stub_stats = _last_json(server.stderr.read().decode(errors="replace"))
    lat, tput = run["latency_ms"], run["throughput"]
    metric = next((m for m in ("itl_token", "itl_chunk") if (lat.get(m) or {}).get("p99") is not None), "itl_chunk")
    itl = lat.get(metric) or {}
    ideal = streams * 1000 / step_ms * args.output_len / (args.output_len + 1)
    tokens = (args.requests_per_stream + 1) * streams * args.output_len  # warm-up included, as in the CPU time
    return {"code": str(code), "step_ms": step_ms, "streams": streams, "output_tok_s": round(tput["output_tokens_per_s"], 1),
            "ideal_tok_s": round(ideal, 1), "share_of_ideal": round(tput["output_tokens_per_s"] / ideal, 3),
            "itl_p99_ms": itl.get("p99"), "itl_p99_steps": round(itl["p99"] / step_ms, 2) if itl.get("p99") else None,
            "itl_metric": metric,
            "ttft_p50_ms": (lat.get("ttft") or {}).get("p50"), "server_cpu_us_per_token": round(cpu / tokens * 1e6, 1),
            # the engine thread's part: RequestStream.emit_token (detokenization, stop checks, events, wake-ups);
            # the rest is the event loop's (HTTP, hand-off, SSE rendering, socket writes)
            "engine_thread_us_per_token": round(engine_cpu / tokens * 1e6, 1) if engine_cpu is not None else None,
            "free_core_tok_s": round(1e6 / (cpu / tokens * 1e6)) if cpu > 0 else None,
            "bench_wall_s": round(wall, 1), "client_valid": run["validity"]["valid"],
            "client_workers": run["target"].get("client_workers", 1),
            "client_loop_lag_p99_ms": max([(w.get("loop_lag_ms") or {}).get("p99") or 0 for w in
                                           run["client"].get("workers") or [run["client"]]]),
            "client_cpu_share": round(run["client"].get("cpu_process") or 0.0, 2),  # of one core, during the load
            # how late the stub's steps started: a step waits for the GIL while the event loop holds it
            "step_lateness_ms": stub_stats.get("step_lateness_ms"),
            "host_probe_ms": host_ms,
            "client_reasons": run["validity"]["reasons"], "extensions": run["target"].get("extensions"),
            "load_average": os.getloadavg()}


def _last_json(text: str) -> dict:
    """The stub's exit counters (its last stderr line), or {} from a stub that prints none."""
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--streams", default="256", help="comma-separated concurrency levels")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--requests-per-stream", type=int, default=2, help="measured requests = this x streams")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--base", type=Path, default=None, help="another checkout to alternate with (A/B)")
    parser.add_argument("--client-workers", default="auto", help="trtbuild bench --client-workers (auto: by streams "
                        "and the CPUs the client is pinned to)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    codes = [ROOT] + ([args.base.resolve()] if args.base else [])
    runs = []
    for r in range(args.rounds):
        for streams in [int(s) for s in args.streams.split(",")]:
            for code in (codes if r % 2 == 0 else codes[::-1]):
                run = one_run(code, args.step_ms, streams, args)
                runs.append(run)
                print(f"{Path(run['code']).name:>12} {streams:4d} streams: {run['output_tok_s']:8.1f} tok/s "
                      f"({run['share_of_ideal']:.0%} of {run['ideal_tok_s']:.0f}), {run['itl_metric']} p99 "
                      f"{run['itl_p99_steps']} steps, TTFT p50 {run['ttft_p50_ms']:.1f} ms, server "
                      f"{run['server_cpu_us_per_token']} us CPU/token (engine thread "
                      f"{run['engine_thread_us_per_token']}), "
                      f"client {'ok' if run['client_valid'] else 'INVALID'} ({run['client_workers']} worker(s), "
                      f"{run['client_cpu_share']:.0%} of a core, loop lag "
                      f"p99 {run['client_loop_lag_p99_ms']:.1f} ms), step lateness {run['step_lateness_ms']}, "
                      f"host probe {run['host_probe_ms']} ms, load {run['load_average'][0]:.1f}",
                      file=sys.stderr, flush=True)
    for streams in sorted({run["streams"] for run in runs}):  # medians over rounds: single runs swing on a shared box
        for code in codes:
            mine = [run for run in runs if run["streams"] == streams and run["code"] == str(code)]
            cpu = statistics.median(run["server_cpu_us_per_token"] for run in mine)
            print(f"median {Path(code).name:>12} {streams:4d} streams over {len(mine)} run(s): {cpu:.1f} us server "
                  f"CPU/token (one free core: {1e6 / cpu:,.0f} tok/s), "
                  f"{statistics.median(run['share_of_ideal'] for run in mine):.0%} of ideal", file=sys.stderr)
    if args.json:
        print(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
