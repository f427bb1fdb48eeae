"""`trtbuild serve` beside `transformers serve --continuous-batching` on the same checkpoint (issue 13).

    # once: transformers serve in its own venv (never in trtbuild's; the torch pin keeps the CPU build)
    python -m venv /tmp/tfserve-venv
    /tmp/tfserve-venv/bin/pip install 'torch==2.13.0' 'transformers[serving]>=5.20,<6'
    # then, from the repository root:
    .venv/bin/python bench/compare_transformers_serve.py --tf-venv /tmp/tfserve-venv [--workspace WS] \\
        [--engine fp16] [--streams 16,32] [--temperatures 0,1] [--rounds 2] [--output-len 64] [--num-requests 64]

The same checkpoint for both: the engine's own model directory (config.json, safetensors), plus a Hugging
Face tokenizer converted from its tokenizer.model.v3 (checked to encode like mistral-common on sample
texts and on every benchmark prompt; mismatches are reported). The same load for both: `trtbuild bench`'s
online client (streaming /v1/completions, text prompts of exact length, usage counts), closed loop at
each --streams level, at each temperature; per level the same as
    trtbuild bench --url URL --model MODEL --concurrency 16 --temperature 1 --input-len 64 --output-len 64 \
        --num-requests 64 --warmup 4
Fairness on a small machine: one server at a time, pinned to the first CPU, the client on the others;
servers alternate order every round. Prints a Markdown table (output tok/s, TTFT p50, the ratio) and
writes comparison.json. Done-when of issue 13: trtbuild >= 1.5x transformers serve's output tok/s at 16
and 32 streams, temperature 0 and 1.0, TTFT p50 no worse, two rounds in a row.

Two facts about transformers serve (5.24) that decide what a fair run is:
- Its continuous-batching manager takes its sampling settings (do_sample, temperature, top-k/top-p) from
  the FIRST request it serves and keeps them; later requests' temperatures are ignored (its own TODO:
  "Remove when CB supports per-request generation config"). So the server is started once per
  temperature, and its first request (the readiness probe) carries `generation_config` with that
  temperature: do_sample only for T > 0, no top-k/top-p (full-vocabulary sampling, as OpenAI and trtbuild).
- It answers 422 to ignore_eos and min_tokens (unknown fields). Its lever for exact lengths is the
  request's `generation_config` JSON: eos_token_id -1 disables EOS for that request (a per-request field of
  its CB requests), so both servers generate exactly --output-len tokens (checked: lengths from usage).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CHECK_TEXTS = ("Hello world, what is the capital of France? 12345", "The cat sat on the mat. It was warm.",
               "def f(x):\n    return x**2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hf_model_dir(engine_dir: Path, out: Path) -> Path:
    """The engine's checkpoint with a Hugging Face tokenizer beside it, for transformers serve."""
    from transformers import LlamaTokenizerFast

    from trtbuild.tokenizer import Tokenizer

    src = engine_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in (".json", ".safetensors"):
            shutil.copy2(f, out / f.name)
    tokenizer = LlamaTokenizerFast(vocab_file=str(src / "tokenizer.model.v3"), legacy=False, from_slow=True,
                                   add_prefix_space=True)
    tokenizer.save_pretrained(out)
    ours = Tokenizer.from_model_dir(src)
    bad = [t for t in CHECK_TEXTS if tokenizer(t)["input_ids"] != ours.encode(t)]
    if bad:
        raise SystemExit(f"error: the converted tokenizer encodes {bad[0]!r} unlike mistral-common")
    return out


def prompt_mismatches(model_dir: Path, spec) -> int:
    """Benchmark prompts the converted tokenizer encodes to another length than mistral-common."""
    from transformers import AutoTokenizer

    from trtbuild.bench.workload import build_requests
    from trtbuild.tokenizer import Tokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    return sum(len(hf(r.prompt_text)["input_ids"]) != r.input_len for r in build_requests(Tokenizer.v3(), spec))


def tf_generation_config(temperature: float) -> str:
    """transformers serve's per-request generation_config: EOS off (exact lengths), this temperature."""
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    return json.dumps({"eos_token_id": -1, **sampling})


class TransformersServe:
    def __init__(self, venv: Path, model_dir: Path, cpus: set[int] | None, log: Path, temperature: float):
        self.venv, self.model_dir, self.cpus, self.log = venv, model_dir, cpus, log
        self.temperature = temperature
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(model_dir)  # transformers serve loads the model a request names

    def __enter__(self):
        # float32 as trtbuild computes on CPU (CPU fp16 matmuls are slow); the model preloaded (FORCE_MODEL)
        cmd = [str(self.venv / "bin" / "transformers"), "serve", str(self.model_dir), "--device", "cpu",
               "--dtype", "float32", "--continuous-batching", "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        env.pop("PYTHONPATH", None)
        pin = (lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=pin)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"transformers serve exited: {self.log.read_text()[-1500:]}")
            try:  # the first request loads the model and fixes the CB manager's sampling (module docstring)
                r = httpx.post(self.url + "/v1/completions", timeout=300, json={
                    "model": self.model, "prompt": "Hello", "max_tokens": 2, "stream": False,
                    "temperature": self.temperature, "generation_config": tf_generation_config(self.temperature)})
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit("transformers serve did not answer within 300 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench(ws, url: str, model: str, spec, streams: int) -> dict:
    from trtbuild.bench.arrivals import LoadSpec
    from trtbuild.bench.online import run_online_bench

    result = run_online_bench(ws, [url], model, spec, [LoadSpec(concurrency=streams)], progress=False,
                              out_dir=Path(tempfile.mkdtemp(prefix="tfcmp-")))[0].summary
    return {"output_tok_s": round(result.throughput["output_tokens_per_s"], 1),
            "ttft_p50_ms": round(result.latency_ms["ttft"]["p50"], 1), "valid": result.validity["valid"],
            "reasons": result.validity["reasons"], "extensions": result.target.get("extensions"),
            "length_mismatches": result.counts.get("flagged", {}).get("length_mismatch", 0),
            "succeeded": result.counts["succeeded"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tf-venv", type=Path, default=Path("/tmp/tfserve-venv"))
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--engine", default="fp16")
    parser.add_argument("--streams", default="16,32")
    parser.add_argument("--temperatures", default="0,1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.tf_venv / "bin" / "transformers").exists():
        raise SystemExit(f"error: no transformers CLI in {args.tf_venv}; install it first (see --help)")

    from trtbuild.bench.workload import WorkloadSpec
    from trtbuild.server.process import ServerProcess
    from trtbuild.workspace import Workspace

    ws = Workspace(args.workspace)
    engine_dir = ws.resolve_engine(args.engine)
    out = args.out or Path(tempfile.mkdtemp(prefix="trtbuild-vs-tfserve-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = hf_model_dir(engine_dir, out / "hf-model")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (None, None)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    rows = []
    temperatures = [float(t) for t in args.temperatures.split(",")]

    def spec(name: str, t: float) -> WorkloadSpec:
        extra = {"generation_config": tf_generation_config(t)} if name == "transformers" else None
        return WorkloadSpec(input_len=args.input_len, output_len=args.output_len, num_requests=args.num_requests,
                            warmup=4, temperature=t, endpoint="completions", extra_body=extra)

    mismatched = prompt_mismatches(model_dir, spec("trtbuild", 0.0))
    servers = {"trtbuild": lambda t: ServerProcess(engine_dir, ws.root, ["--log-level", "warning"],
                                                   log_path=out / "trtbuild.log", cpus=server_cpus),
               "transformers": lambda t: TransformersServe(args.tf_venv, model_dir, server_cpus,
                                                           out / "tfserve.log", t)}
    for r in range(args.rounds):
        for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
            for t in temperatures:  # a fresh server per temperature: transformers serve needs it, so both get it
                with servers[name](t) as server:
                    for streams in [int(s) for s in args.streams.split(",")]:
                        got = bench(ws, server.url, server.model, spec(name, t), streams)
                        rows.append({"round": r + 1, "server": name, "streams": streams, "temperature": t,
                                     **got, "load_average": os.getloadavg()[0]})
                        print(f"round {r + 1} {name:12s} {streams:3d} streams T={t:g}: {got['output_tok_s']:8.1f} "
                              f"tok/s, TTFT p50 {got['ttft_p50_ms']:.1f} ms, {got['succeeded']} ok, "
                              f"{got['length_mismatches']} wrong lengths (load {os.getloadavg()[0]:.1f})",
                              file=sys.stderr, flush=True)
    table = ["| round | load | trtbuild serve | transformers serve CB | ratio | TTFT p50 no worse |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row["server"] != "trtbuild":
            continue
        peer = next(x for x in rows if x["server"] == "transformers" and x["round"] == row["round"]
                    and x["streams"] == row["streams"] and x["temperature"] == row["temperature"])
        ratio = row["output_tok_s"] / peer["output_tok_s"]
        row["ratio"], row["ttft_no_worse"] = round(ratio, 2), row["ttft_p50_ms"] <= peer["ttft_p50_ms"]
        table.append(f"| {row['round']} | {row['streams']} streams, T={row['temperature']:g} | {row['output_tok_s']} "
                     f"tok/s, TTFT p50 {row['ttft_p50_ms']} ms | {peer['output_tok_s']} tok/s, TTFT p50 "
                     f"{peer['ttft_p50_ms']} ms | {ratio:.2f}x | {'yes' if row['ttft_no_worse'] else 'no'} |")
    (out / "comparison.json").write_text(json.dumps({"rows": rows, "prompts_encoded_differently": mismatched,
                                                     "cpus": cpus}, indent=2))
    print("\n".join(table))
    print(f"\n{mismatched} benchmark prompt(s) encode to another length under the converted tokenizer; "
          f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
