"""`trtbuild bench --url` beside NVIDIA AIPerf against the same `trtbuild serve`, with the server's own view.

    python bench/compare_aiperf.py --aiperf /path/to/aiperf-venv/bin/aiperf [--workspace WS] [--engine fp16]
        [--load concurrency=2] [--load rate=4] [--rounds 2] [--num-requests 150] [--out DIR]

AIPerf lives in its own venv (`python -m venv v && v/bin/pip install aiperf`), never in trtbuild's.
What makes the comparison fair on a small machine (each point was a measured disagreement):
- the tools alternate (never run at once) against ONE server, round after round;
- the server is pinned to the first CPU and each client to the others (AIPerf's timing service alone keeps
  most of a core busy in closed-loop mode, beside a CPU-bound server);
- both ask for the same work: greedy (AIPerf sends no temperature, so a server samples at 1.0, which costs
  the CPU engine ~1.5 ms a step), ignore_eos + min_tokens = max_tokens, server token counts;
- `rate=R` runs both open loop at constant arrivals: the same schedule in both tools. In closed loop
  (`concurrency=N`) a client's turnaround (last chunk -> next request) decides where a new request lands
  in the engine's step, which moves TTFT: AIPerf's is ~4-5 ms, ours ~0.04 ms. Both are then right
  about different loads; the server's own log shows it.
The server's access log (`--log-level info`: arrival, duration, ttft_s per request) is the referee: per run
it gives the server-side TTFT p50, output tok/s and decode ms/token of exactly that run's requests.
AIPerf resolves tokenizers through the Hugging Face hub, so the engine's tokenizer is written into an
offline HF cache under the output directory as `local/mistral-v3` (converted from tokenizer.model.v3
when the engine has no tokenizer.json, and checked against mistral-common's encoding).
Prints a Markdown table and writes comparison.json in the output directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trtbuild.server.process import ServerProcess
from trtbuild.workspace import Workspace, atomic_write_json, atomic_write_text

HF_REPO = "local/mistral-v3"
HF_REVISION = "0" * 40
CHECK_TEXTS = ("Hello world, what is the capital of France? 12345 héllo",
               "多语言 текст\n\n  two  spaces", "def f(x):\n    return x**2")


def load_args(load: str) -> tuple[list[str], list[str]]:
    """`concurrency=N` or `rate=R` -> (trtbuild bench args, aiperf args) asking for the same load."""
    kind, _, value = load.partition("=")
    float(value)  # a bad number fails here, before any server starts
    if kind == "concurrency":
        return ["--concurrency", value], ["--concurrency", value]
    if kind == "rate":
        return (["--request-rate", value, "--arrival", "constant"],
                ["--request-rate", value, "--arrival-pattern", "constant"])
    raise SystemExit(f"error: --load {load!r}: use concurrency=N or rate=R")


def relative_diff(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / theirs


def turnaround_ms(starts: list[int], ends: list[int]) -> float | None:
    """Median gap between a request's send and the latest completion before it (closed loop: the
    client's turnaround; open loop: just the schedule)."""
    ends = sorted(ends)
    gaps, j = [], 0
    for start in sorted(starts):
        while j < len(ends) and ends[j] <= start:
            j += 1
        if j:
            gaps.append((start - ends[j - 1]) / 1e6)
    return statistics.median(gaps) if gaps else None


def server_view(access_log: Path, start: float, end: float, input_len: int, output_len: int, warmup: int) -> dict:
    """The server's account of one run: access-log lines of full-size completions that ended in [start, end],
    the first `warmup` (by arrival) dropped."""
    lines = []
    for text in access_log.read_text(errors="replace").splitlines():
        if '"request_id"' not in text:
            continue
        rec = json.loads(text[text.index("{"):])
        if (rec.get("status") == 200 and rec.get("prompt_tokens") == input_len
                and rec.get("completion_tokens") == output_len and start <= rec["ts"] <= end):
            lines.append(rec)
    lines.sort(key=lambda r: r["ts"] - r["duration_s"])
    lines = lines[warmup:]
    if not lines:
        return {"requests": 0}
    window = max(r["ts"] for r in lines) - min(r["ts"] - r["duration_s"] for r in lines)
    return {"requests": len(lines),
            "output_tokens_per_s": output_len * len(lines) / window,
            "ttft_p50_ms": 1000 * statistics.median(r["ttft_s"] for r in lines),
            "decode_ms_per_token_p50": 1000 * statistics.median(
                (r["duration_s"] - r["ttft_s"]) / (output_len - 1) for r in lines) if output_len > 1 else None}


def read_ours(stdout: str) -> dict:
    run = json.loads(stdout)["runs"][0]
    records = [json.loads(line) for line in (Path(run["path"]) / "requests.jsonl").read_text().splitlines()]
    records = [r for r in records if not r["warmup"] and r["error_type"] is None]
    return {"ttft_p50_ms": run["latency_ms"]["ttft"]["p50"],
            "output_tokens_per_s": run["throughput"]["output_tokens_per_s"],
            "requests": run["counts"]["succeeded"], "valid": run["validity"]["valid"],
            "turnaround_p50_ms": turnaround_ms([r["sent_ns"] for r in records], [r["end_ns"] for r in records]),
            "path": run["path"]}


def read_aiperf(artifacts: Path) -> dict:
    export = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    records = [json.loads(line)["metadata"] for line in (artifacts / "profile_export.jsonl").read_text().splitlines()]
    records = [m for m in records if m.get("benchmark_phase") == "profiling"]
    return {"ttft_p50_ms": export["time_to_first_token"]["p50"],
            "output_tokens_per_s": export["output_token_throughput"]["avg"],
            "requests": int(export["request_count"]["avg"]), "valid": None,
            "turnaround_p50_ms": turnaround_ms([m["request_start_ns"] for m in records],
                                               [m["request_end_ns"] for m in records]),
            "path": str(artifacts)}


def write_hf_tokenizer(engine_dir: Path, hf_home: Path) -> Path:
    """Put the engine's tokenizer in an offline HF cache as HF_REPO (AIPerf accepts hub ids only)."""
    from transformers import AutoTokenizer, LlamaTokenizerFast

    from trtbuild.tokenizer import Tokenizer

    snapshot = hf_home / "hub" / f"models--{HF_REPO.replace('/', '--')}" / "snapshots" / HF_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    found = sorted(engine_dir.rglob("tokenizer.json"))
    if found:
        tokenizer = AutoTokenizer.from_pretrained(found[0].parent)
    else:  # the tiny model ships mistral-common's file only
        v3 = sorted(engine_dir.rglob("tokenizer.model.v3"))[0]
        tokenizer = LlamaTokenizerFast(vocab_file=str(v3), legacy=False, from_slow=True, add_prefix_space=True)
    tokenizer.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(HF_REVISION)
    ours = Tokenizer.from_model_dir(sorted(engine_dir.rglob("tokenizer.model*"))[0].parent)
    for text in CHECK_TEXTS:
        if tokenizer(text)["input_ids"] != ours.encode(text):
            raise SystemExit(f"error: the HF tokenizer written for AIPerf encodes {text!r} unlike mistral-common")
    return hf_home


def run_tool(cmd: list[str], cpus: set[int] | None, env: dict | None = None) -> subprocess.CompletedProcess:
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, preexec_fn=pin)


def compare(args) -> dict:
    ws = Workspace(args.workspace)
    engine_dir = ws.resolve_engine(args.engine)
    out = Path(args.out or tempfile.mkdtemp(prefix="compare-aiperf-"))
    out.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) >= 2 else (None, None)
    hf_env = {"HF_HOME": str(write_hf_tokenizer(engine_dir, out / "hf-home")), "HF_HUB_OFFLINE": "1",
              "TRANSFORMERS_OFFLINE": "1"}
    access_log = out / "serve.log"
    shape = ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
    rows = []
    with ServerProcess(engine_dir, ws.root, ["--log-level", "info"], log_path=access_log, cpus=server_cpus) as server:
        print(TABLE_HEAD, end="", file=sys.stderr)
        for load in args.load:
            ours_load, aiperf_load = load_args(load)
            for round_ in range(1, args.rounds + 1):
                for tool in ("trtbuild", "aiperf"):
                    tag = f"{load.replace('=', '')}-r{round_}-{tool}"
                    start = time.time()
                    if tool == "trtbuild":
                        done = run_tool([sys.executable, "-m", "trtbuild.cli", "--workspace", str(ws.root), "bench",
                                         str(engine_dir), "--url", server.url, "--model", server.model, *ours_load,
                                         *shape, "--num-requests", str(args.num_requests), "--warmup",
                                         str(args.warmup), "--seed", str(round_), "--no-progress", "--json"],
                                        client_cpus)
                    else:
                        done = run_tool([args.aiperf, "profile", "--model", server.model, "--url", server.url,
                                         "--endpoint-type", "completions", "--streaming", "--tokenizer", HF_REPO,
                                         "--prompt-input-tokens-mean", str(args.input_len),
                                         "--prompt-input-tokens-stddev", "0",
                                         "--prompt-output-tokens-mean", str(args.output_len),
                                         "--prompt-output-tokens-stddev", "0",
                                         "--extra-inputs", "ignore_eos:true",
                                         "--extra-inputs", f"min_tokens:{args.output_len}",
                                         "--extra-inputs", "temperature:0", *aiperf_load,
                                         "--request-count", str(args.num_requests),
                                         "--warmup-request-count", str(args.warmup), "--use-server-token-count",
                                         "--ui-type", "none", "--workers-max", "1",
                                         "--record-processor-service-count", "1", "--no-server-metrics",
                                         "--random-seed", str(round_), "--output-artifact-dir", str(out / tag)],
                                        client_cpus, hf_env)
                    end = time.time()
                    (out / f"{tag}.log").write_text(done.stdout + done.stderr)
                    if done.returncode != 0:
                        raise SystemExit(f"error: {tool} failed (exit {done.returncode}); see {out / f'{tag}.log'}")
                    client = read_ours(done.stdout) if tool == "trtbuild" else read_aiperf(out / tag)
                    row = {"load": load, "round": round_, "tool": tool, "client": client,
                           "server": server_view(access_log, start, end, args.input_len, args.output_len,
                                                 args.warmup)}
                    rows.append(row)
                    print(table_row(row), end="", file=sys.stderr)
    result = {"engine": str(engine_dir), "input_len": args.input_len, "output_len": args.output_len,
              "num_requests": args.num_requests, "server_cpus": sorted(server_cpus or ()),
              "client_cpus": sorted(client_cpus or ()), "rows": rows, "agreement": agreement(rows)}
    atomic_write_json(out / "comparison.json", result)
    atomic_write_text(out / "comparison.md", markdown(result))
    return result | {"out": str(out)}


def agreement(rows: list[dict]) -> list[dict]:
    """Per load and round, ours against AIPerf: client-side figures and the server's view of each run."""
    found = []
    pairs: dict = {}
    for row in rows:
        pairs.setdefault((row["load"], row["round"]), {})[row["tool"]] = row
    for (load, round_), pair in pairs.items():
        if set(pair) != {"trtbuild", "aiperf"}:
            continue
        ours, theirs = pair["trtbuild"], pair["aiperf"]
        found.append({"load": load, "round": round_, **{
            f"{side}_{metric}_diff": relative_diff(ours[side][metric], theirs[side][metric])
            for side in ("client", "server") for metric in ("ttft_p50_ms", "output_tokens_per_s")
            if ours[side].get(metric) and theirs[side].get(metric)}})
    return found


def _turnaround(row: dict) -> str:
    """Only a closed loop has a turnaround; an open loop's gaps are its schedule."""
    value = row["client"]["turnaround_p50_ms"]
    return f"{value:.2f}" if row["load"].startswith("concurrency") and value is not None else "-"


TABLE_HEAD = ("| load | round | tool | TTFT p50 ms | out tok/s | turnaround p50 ms | server TTFT p50 ms | "
              "server out tok/s | server decode ms/token |\n|---|---|---|---|---|---|---|---|---|\n")


def table_row(r: dict) -> str:
    """One run as a Markdown table row: the progress line while running, and the report's table."""
    c, s = r["client"], r["server"]
    return (f"| {r['load']} | {r['round']} | {r['tool']} | {c['ttft_p50_ms']:.2f} | {c['output_tokens_per_s']:.1f} | "
            f"{_turnaround(r)} | {s.get('ttft_p50_ms', 0):.2f} | {s.get('output_tokens_per_s', 0):.1f} | "
            f"{s.get('decode_ms_per_token_p50') or 0:.2f} |\n")


def markdown(result: dict) -> str:
    body = "".join(table_row(r) for r in result["rows"])
    diffs = "".join(
        f"- {a['load']} round {a['round']}: TTFT p50 {100 * a.get('client_ttft_p50_ms_diff', 0):.1f}% apart, "
        f"output tok/s {100 * a.get('client_output_tokens_per_s_diff', 0):.1f}% apart (server's view of the two "
        f"runs: {100 * a.get('server_ttft_p50_ms_diff', 0):.1f}% and "
        f"{100 * a.get('server_output_tokens_per_s_diff', 0):.1f}%)\n" for a in result["agreement"])
    return (f"# trtbuild bench vs AIPerf\n\nEngine `{result['engine']}`, {result['input_len']} -> "
            f"{result['output_len']} tokens, {result['num_requests']} requests a run; server on CPUs "
            f"{result['server_cpus']}, clients on {result['client_cpus']}.\n\n{TABLE_HEAD}{body}\n{diffs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aiperf", required=True, help="the aiperf executable (its own venv)")
    parser.add_argument("--workspace", default=None, help="trtbuild workspace (default: $TRTBUILD_WORKSPACE)")
    parser.add_argument("--engine", default="fp16", help="engine path, variant or key prefix")
    parser.add_argument("--load", action="append", help="concurrency=N or rate=R (constant arrivals); repeat")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-requests", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--out", default=None, help="output directory (default: a new temporary one)")
    args = parser.parse_args()
    args.load = args.load or ["concurrency=2", "rate=4"]
    for load in args.load:
        load_args(load)
    result = compare(args)
    print(markdown(result))
    print(Path(result["out"]) / "comparison.md")


if __name__ == "__main__":
    main()
