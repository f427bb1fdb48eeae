"""Output tokens/s of the same load through `trtbuild serve` (HTTP + SSE) and in-process (the interface).

    python bench/bench_server_vs_inprocess.py --workspace WS [--engine fp16] [--concurrency 32]
        [--max-tokens 128] [--rounds 3]

Each round sends `concurrency` streaming requests at once (distinct token-id prompts, greedy, ignore_eos,
exactly max_tokens each) and measures generated tokens / wall time until the last one ends. Rounds
alternate between the two paths so that background load on the machine hits both alike; the median of
each is reported, with the median of the per-round ratios (the server's target: >= 0.90). On a shared,
busy machine single rounds swing widely, so each round also records the CPU seconds the serving process
spent per 1000 tokens (/proc/PID/stat): the server's extra CPU per token is its real overhead.

In-process, a consumer task per request reads RequestStream.aiter_batches() on an asyncio loop, as the
server does. Through the server, a raw-socket client in this process drains the SSE streams in bulk and
takes each token count from the final usage chunk (see server_round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import sys
import time

from trtbuild.runtime import SamplingParams, load_engine
from trtbuild.server.process import ServerProcess
from trtbuild.workspace import Workspace


def make_prompts(tokenizer, count: int) -> list[list[int]]:
    words = ["cat", "river", "market", "winter", "garden", "story", "music", "window"]
    return [tokenizer.encode(f"Tell me about the {words[i % 8]} number {i} and what happened next.") for i in range(count)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process, all its threads (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured(pid: int, round_coro) -> dict:
    cpu = cpu_seconds(pid)
    result = await round_coro
    result["cpu_s_per_1k_tokens"] = round((cpu_seconds(pid) - cpu) / result["tokens"] * 1000, 3)
    return result


async def inprocess_round(engine, prompts, max_tokens: int) -> dict:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)

    async def consume(stream):
        events = 0
        async for batch in stream.aiter_batches():
            events += 1
        return len(stream.token_ids), events

    start = time.perf_counter()
    streams = [engine.submit(p, params) for p in prompts]
    done = await asyncio.gather(*(consume(s) for s in streams))
    return summary(done, time.perf_counter() - start)


def server_round(url: str, model: str, prompts, max_tokens: int, poll_s: float = 0.01) -> dict:
    """All requests at once over raw HTTP/1.1 sockets, drained in bulk every poll_s: a throughput client
    needs no per-chunk timestamps, and on a 2-core machine a client woken per chunk (aiohttp: about
    30 us of CPU per chunk) takes CPU from the server it measures."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    start = time.perf_counter()
    for prompt in prompts:
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                           "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (host.encode(), len(body), body))
        sock.setblocking(False)
        socks.append(sock)
    received = {sock: [] for sock in socks}
    pending = set(socks)
    while pending:
        time.sleep(poll_s)
        for sock in list(pending):
            while True:
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    break
                if not data:  # Connection: close -> the server closes after the last chunk
                    pending.discard(sock)
                    break
                received[sock].append(data)
    seconds = time.perf_counter() - start
    done = []
    for sock in socks:
        sock.close()
        raw = b"".join(received[sock])
        assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
        usage = re.findall(rb'"completion_tokens":(\d+)', raw)[-1]
        done.append((int(usage), raw.count(b"data: ") - 2))  # minus the usage chunk and [DONE]
    return summary(done, seconds)


def summary(done, seconds: float) -> dict:
    tokens = sum(t for t, _ in done)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tok_s": round(tokens / seconds, 1),
            "sse_events_per_request": round(sum(e for _, e in done) / len(done), 1)}


async def run(args) -> dict:
    ws = Workspace(args.workspace)
    engine_dir = ws.resolve_engine(args.engine)
    engine = load_engine(engine_dir)
    prompts = make_prompts(engine.tokenizer, args.concurrency)
    results = {"inprocess": [], "server": []}
    with ServerProcess(engine_dir, ws.root, ["--log-level", "warning"]) as server:
        await inprocess_round(engine, prompts[:4], 8)  # warm-up both
        server_round(server.url, server.model, prompts[:4], 8)
        for i in range(args.rounds):
            paths = {"inprocess": lambda: measured(os.getpid(), inprocess_round(engine, prompts, args.max_tokens)),
                     "server": lambda: measured(server.proc.pid, asyncio.to_thread(
                         server_round, server.url, server.model, prompts, args.max_tokens))}
            for name in (paths if i % 2 == 0 else reversed(paths)):  # alternate which goes first
                results[name].append(await paths[name]())
            print(f"round {i}: in-process {results['inprocess'][-1]['tok_s']:7.1f} tok/s "
                  f"({results['inprocess'][-1]['cpu_s_per_1k_tokens']:.2f} cpu-s/1k tok)   "
                  f"server {results['server'][-1]['tok_s']:7.1f} tok/s "
                  f"({results['server'][-1]['cpu_s_per_1k_tokens']:.2f} cpu-s/1k tok)", file=sys.stderr)
    engine.close()
    medians = {k: statistics.median(r["tok_s"] for r in v) for k, v in results.items()}
    ratios = [s["tok_s"] / i["tok_s"] for s, i in zip(results["server"], results["inprocess"])]
    cpu = {k: statistics.median(r["cpu_s_per_1k_tokens"] for r in v) for k, v in results.items()}
    return {"engine": str(engine_dir), "concurrency": args.concurrency, "max_tokens": args.max_tokens,
            "rounds": results, "median_tok_s": medians, "ratio": round(statistics.median(ratios), 3),
            "median_cpu_s_per_1k_tokens": cpu, "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=None, help="trtbuild workspace (default: $TRTBUILD_WORKSPACE)")
    parser.add_argument("--engine", default="fp16", help="engine path, variant or key prefix")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    print(f"server / in-process = {result['ratio']:.3f} (median of per-round ratios; medians "
          f"{result['median_tok_s']['server']} vs {result['median_tok_s']['inprocess']} tok/s; CPU per 1k tokens "
          f"{result['median_cpu_s_per_1k_tokens']['server']} vs {result['median_cpu_s_per_1k_tokens']['inprocess']} s)")


if __name__ == "__main__":
    main()
