"""A no-op OpenAI-compatible streaming endpoint: for measuring the benchmark client itself.

It runs no model. It answers /v1/completions with max_tokens chunks of one fixed token each (usage in
every chunk when continuous_usage_stats is asked for), optionally `--itl-ms` apart, and
/v1/chat/completions the same way after a role-only first chunk (sent at once, before `--ttft-ms`, so a
client that took it for the first token would report a visibly wrong TTFT), so the requests/s
and chunks/s that `trtbuild bench --url` reaches against it are the client's ceiling on this machine
(guidellm#136: a no-op server capped one popular client near 1000 req/s). Tests use it as a fake
server with exactly known timings.

    python -m trtbuild.bench.nullserver --port 8199 [--itl-ms 0] [--ttft-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from typing import Iterator

from aiohttp import web

MODEL = "null"
TOKEN_TEXT = " x"


def make_app(ttft_ms: float = 0.0, itl_ms: float = 0.0, tokens_per_chunk: int = 1, model: str = MODEL,
             fail_every: int = 0, short_by: int = 0) -> web.Application:
    """fail_every > 0: every n-th request answers HTTP 500 (failure accounting); short_by > 0: answer that
    many tokens fewer than asked, like a server that ignores ignore_eos (dynamo#723)."""
    state = {"n": 0}
    from trtbuild.tokenizer import Tokenizer

    tokenizer = Tokenizer.v3()  # prompt_tokens in usage are real counts, as a real server reports them

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                              "owned_by": "trtbuild-nullserver"}]})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def completions(request: web.Request, chat: bool = False) -> web.StreamResponse:
        body = await request.json()
        state["n"] += 1
        if fail_every and state["n"] % fail_every == 0:
            return web.json_response({"error": {"message": "injected failure", "type": "server_error",
                                                "param": None, "code": 500}}, status=500)
        n = max(int(body.get("max_tokens", 16)) - short_by, 1)
        if chat:  # the Mistral v3 template, as trtbuild serve counts it
            prompt_tokens = len(tokenizer.encode_chat(body.get("messages") or []))
        else:
            prompt = body.get("prompt")
            prompt_tokens = len(prompt) if isinstance(prompt, list) else len(tokenizer.encode(str(prompt), bos=True))
        options = body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))
        head = {"id": "chatcmpl-null" if chat else "cmpl-null",
                "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
                "model": model}

        def usage(completion_tokens: int) -> dict:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}

        async def send(choices: list, completion_tokens: int | None) -> None:
            chunk = dict(head, choices=choices)
            if completion_tokens is not None:
                chunk["usage"] = usage(completion_tokens)
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if chat:  # with continuous usage, vLLM puts usage 0 on the role chunk (trtbuild serve none): ignore both
            await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}], 0 if continuous else None)
        if ttft_ms:
            await asyncio.sleep(ttft_ms / 1e3)
        sent = 0
        while sent < n:
            k = min(tokens_per_chunk, n - sent)
            sent += k
            content = {"delta": {"content": TOKEN_TEXT * k}} if chat else {"text": TOKEN_TEXT * k}
            await send([{"index": 0, **content, "logprobs": None, "finish_reason": "length" if sent == n else None}],
                       sent if continuous else None)
            if itl_ms and sent < n:
                await asyncio.sleep(itl_ms / 1e3)
        if options.get("include_usage"):
            await send([], n)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await completions(request, chat=True)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


@contextlib.contextmanager
def serve_in_thread(host: str = "127.0.0.1", **options) -> Iterator[str]:
    """Run the endpoint on its own event loop in a background thread; yields its base URL (tests, bench/)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(**options), access_log=None)
    ready: dict = {}

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, host, 0)
        loop.run_until_complete(site.start())
        ready["port"] = site._server.sockets[0].getsockname()[1]
        loop.run_forever()

    thread = threading.Thread(target=run, name="nullserver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while "port" not in ready:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the null server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{ready['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--short-by", type=int, default=0)
    args = parser.parse_args(argv)
    app = make_app(args.ttft_ms, args.itl_ms, args.tokens_per_chunk, fail_every=args.fail_every,
                   short_by=args.short_by)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
