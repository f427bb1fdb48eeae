"""What one request costs the server's CPU, apart from its tokens: uvicorn with trtbuild's HTTP protocol and
a trivial ASGI app (the floor), against the real app over the stub engine (bench/stub_engine.py), both
answering streamed 1-token completions (issue 13, item 3: requests arrive in waves at 256 streams).

    .venv/bin/python bench/bench_request_cost.py [--connections 64] [--requests 20]

The server runs pinned to the first CPU, the client (trtbuild.bench.http) to the others; the figure is
the server process's /proc CPU time over the measured requests (after a warm-up of 5 per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench_serving_path import cpu_seconds, pin  # this directory: the same /proc reading and pinning

HERE = Path(__file__).resolve().parent
ONE_CHUNK = b'data: {"choices":[{"index":0,"text":" x"}],"usage":{"completion_tokens":1}}\n\ndata: [DONE]\n\n'


def serve(kind: str) -> None:
    """The server process: prints its port, then serves until terminated."""
    import uvicorn

    sys.path.insert(0, str(HERE))
    from stub_engine import StubEngine

    from trtbuild.server import ServerSettings, create_app
    from trtbuild.server.limits import protocol_class

    real = create_app(StubEngine(10.0, 256), ServerSettings(max_queue=1024))

    async def trivial(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": ONE_CHUNK, "more_body": False})

    state = real.state.server
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(real if kind == "app" else trivial, log_level="warning", access_log=False,
                            lifespan="on" if kind == "app" else "off",
                            http=protocol_class(state.settings.limits, state.connection_metrics))
    uvicorn.Server(config).run(sockets=[sock])


def measure(kind: str, connections: int, requests: int) -> float:
    """Server CPU seconds per request."""
    from trtbuild.bench.http import StreamClient
    from trtbuild.bench.runner import run_client

    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (None, None)
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE,
                              preexec_fn=pin(server_cpus))
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        time.sleep(1.0)  # the app's engine loads in the lifespan
        body = json.dumps({"model": "stub-10ms", "prompt": "The history of the city begins with a small market",
                           "max_tokens": 1, "stream": True,
                           "stream_options": {"include_usage": True, "continuous_usage_stats": True}}).encode()
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)

        async def main() -> float:
            client = StreamClient(timeout_s=60)

            async def connection(n: int) -> None:
                for _ in range(n):
                    await client.post(url, "/v1/completions", body, lambda piece: None)

            await asyncio.gather(*(connection(5) for _ in range(connections)))  # warm-up
            before = cpu_seconds(server.pid)
            await asyncio.gather(*(connection(requests) for _ in range(connections)))
            client.close()
            return (cpu_seconds(server.pid) - before) / (connections * requests)

        return run_client(main())
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20, help="measured requests per connection")
    parser.add_argument("--serve", choices=("floor", "app"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    for kind, what in (("floor", "uvicorn + trtbuild's protocol, trivial app"), ("app", "trtbuild's app over the stub")):
        print(f"{what}: {measure(kind, args.connections, args.requests) * 1e6:.0f} us server CPU a request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
