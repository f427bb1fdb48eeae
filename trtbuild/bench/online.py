"""Online benchmark: an asyncio client against OpenAI-compatible endpoints (/v1/completions or
/v1/chat/completions, streaming).

Streamed requests go over trtbuild.bench.http's keep-alive connections (one per request in flight, per
client process); each socket read is parsed in the read's own callback and stamped there with
time.monotonic_ns, so an event's stamp is the read that completed it (aiohttp only probes the servers). At high
concurrency the load is spread over client worker processes (--client-workers, trtbuild/bench/workers.py),
each with its own loop and self-checks; their stamps share one system-wide clock. Prompts go as text by default (any
server takes it; the workload checked that the text re-encodes to the exact length) or as token ids
(`prompt_format="ids"`, exact by construction; the dataset's own ids when it has no text).
Exact output lengths ask for ignore_eos + min_tokens = max_tokens; stream_options asks for usage
(include_usage) and per-chunk usage (continuous_usage_stats) where the server accepts them: a probe
request finds out, and drops what a server rejects with 400. Output counts come from usage, with the
client's re-tokenization of the text as a cross-check. Queue time is the server's: unknown here.
Chat (`WorkloadSpec.endpoint="chat"`) sends the prompt text as one user message and reads
`choices[0].delta.content`; the first chunk carries only the role and is no content chunk (TTFT stays
the first content). One request/stream path serves both endpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import aiohttp
from tqdm import tqdm

from trtbuild.bench.arrivals import LoadSpec
from trtbuild.bench.environment import EnvironmentMonitor
from trtbuild.bench.http import HTTPStatusError, StreamClient
from trtbuild.bench.metrics import SLO
from trtbuild.bench.results import BenchResult, RequestRecord, save_run
from trtbuild.bench.runner import PooledMonitor, run_client, run_load, summarize
from trtbuild.bench.sse import SSEParser
from trtbuild.bench.trials import interleave, merge_trials
from trtbuild.bench.workers import ClientConfig, WorkerPool, auto_workers, merge, parse_workers
from trtbuild.bench.workload import BenchRequest, WorkloadSpec, build_requests
from trtbuild.errors import TrtbuildError
from trtbuild.tokenizer import Tokenizer
from trtbuild.workspace import Workspace

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def request_body(req: BenchRequest, model: str, spec: WorkloadSpec, extensions: dict, prompt_format: str) -> dict:
    body: dict = {"model": model}
    if spec.endpoint == "chat":  # the workload built the text so that the templated prompt is exact
        body["messages"] = [{"role": "user", "content": req.prompt_text}]
    else:
        use_ids = prompt_format == "ids" or req.prompt_text is None
        body["prompt"] = req.prompt_ids if use_ids else req.prompt_text
    body.update({"max_tokens": req.output_len, "temperature": spec.temperature, "stream": True,
                 "stream_options": {"include_usage": True}})
    if extensions.get("continuous_usage_stats"):
        body["stream_options"]["continuous_usage_stats"] = True
    if spec.ignore_eos and extensions.get("ignore_eos"):
        body["ignore_eos"] = True
        body["min_tokens"] = req.output_len
    body.update(spec.extra_body or {})
    return body


CLOCK = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for the client's processes (trtbuild/bench/workers.py)


async def stream_completion(client: StreamClient, url: str, path: str, body: dict, rec: RequestRecord,
                            t0: int, texts: dict, clock=CLOCK) -> None:
    """Send one streaming (chat) completion to url + path and fill rec; the text goes to texts[rec.index]
    for re-tokenizing. Stamps: clock() - t0, taken in the socket read that completed each event."""
    stream = StreamRecorder(rec, t0, clock)
    rec.target = url
    rec.sent_ns = clock() - t0
    try:
        await client.post(url, path, json.dumps(body).encode(), stream.feed)
    except HTTPStatusError as exc:
        rec.error_type, rec.error = f"http_{exc.status}", exc.body.decode("utf-8", "replace")[:300]
    except TimeoutError:
        rec.error_type, rec.error = "timeout", "no complete answer within the request timeout"
    except OSError as exc:  # ConnectionError is one
        rec.error_type, rec.error = "connection", f"{type(exc).__name__}: {exc}"[:300]
    finally:
        rec.end_ns = clock() - t0
    stream.finish(texts)


class StreamRecorder:
    """One streamed response into its RequestRecord, fed from the socket's reads (trtbuild.bench.http).
    A read is only stamped and kept while the load runs: at 256 streams the reads of one engine step
    arrive together, and the last one's stamp waits for every callback before it (parsing the events in
    the read path took ~60% of the client's CPU and put its loop-lag p99 past 5 ms). `settle()`, after
    the load, parses the SSE events: content events become chunk stamps, text and (from continuous usage)
    token counts."""

    def __init__(self, rec: RequestRecord, t0: int, clock):
        self.rec, self.t0, self.clock = rec, t0, clock
        self.stamps: list[int] = []
        self.reads: list[bytes] = []
        self.pieces: list[str] = []
        self.counted = 0  # completion tokens reported by continuous usage so far
        self.per_chunk: list[int] | None = []

    def feed(self, data: bytes) -> None:
        now = self.clock() - self.t0
        if self.rec.first_byte_ns is None:
            self.rec.first_byte_ns = now
        self.stamps.append(now)
        self.reads.append(data)

    def finish(self, texts: dict) -> None:
        texts[self.rec.index] = self  # settled after the load (settle_texts)

    def settle(self) -> str:
        """Parse what was read; returns the text. An error the transport met (stream_completion) stays
        the request's error over one found in the events: it came later."""
        rec, parser = self.rec, SSEParser()
        transport_error = (rec.error_type, rec.error) if rec.error_type is not None else None
        try:
            for now, data in zip(self.stamps, self.reads):
                self._events(parser.feed(data), now)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as exc:
            # what follows an unparseable event is not trusted either
            rec.error_type, rec.error = "bad_response", f"unparseable stream event: {exc}"[:300]
        self.stamps, self.reads = [], []
        if transport_error is not None:
            rec.error_type, rec.error = transport_error
        per_chunk = self.per_chunk
        rec.chunk_tokens = per_chunk if per_chunk and len(per_chunk) == len(rec.chunk_ns) else None
        if rec.error_type is None and not rec.chunk_ns:
            rec.error_type, rec.error = "empty_response", "the stream carried no content"
        return "".join(self.pieces)

    def _events(self, payloads: list[str], now: int) -> None:
        rec = self.rec
        for payload in payloads:
            if payload == "[DONE]":
                continue
            event = json.loads(payload)
            if "error" in event:
                err = event["error"]
                rec.error_type = "stream_error"
                rec.error = str(err.get("message", err) if isinstance(err, dict) else err)[:300]
                continue
            usage = event.get("usage") or None
            choices = event.get("choices") or []
            text, tokens, role_only = "", 0, False
            if choices:
                choice = choices[0]
                delta = choice.get("delta") or {}
                text = choice.get("text") or delta.get("content") or ""
                rec.finish_reason = choice.get("finish_reason") or rec.finish_reason
                # chat's first chunk: {"role": "assistant", "content": ""}, no token yet
                role_only = "role" in delta and not text and not choice.get("finish_reason")
            if usage is not None and usage.get("completion_tokens") is not None:
                tokens = usage["completion_tokens"] - self.counted
                self.counted = usage["completion_tokens"]
                rec.token_counts["usage"] = self.counted
                rec.prompt_tokens_usage = usage.get("prompt_tokens")
            elif choices and not role_only:
                self.per_chunk = None  # a content chunk without usage: the split is unknown
            if choices and (text or tokens > 0):
                rec.chunk_ns.append(now)
                self.pieces.append(text)
                if self.per_chunk is not None:
                    self.per_chunk.append(tokens)


def settle_texts(texts: dict) -> dict[int, str]:
    """After a load: every request's StreamRecorder (stream_completion left it in texts) parsed into its
    record; returns request index -> text."""
    return {index: r.settle() if isinstance(r, StreamRecorder) else r for index, r in texts.items()}


async def probe(session: aiohttp.ClientSession, url: str, model: str, api_key: str | None,
                endpoint: str = "completions") -> dict:
    """Check the server and model, and which request extensions the endpoint benchmarked accepts (a 400
    drops one)."""
    info: dict = {"url": url}
    try:
        async with session.get(url + "/v1/models", headers=_headers(api_key)) as resp:
            if resp.status == 200:
                cards = (await resp.json()).get("data") or []
                info["models"] = cards
                ids = [c.get("id") for c in cards]
                if ids and model not in ids:
                    raise TrtbuildError(f"{url} does not serve model {model!r}; it serves: {', '.join(map(str, ids))}")
        async with session.get(url + "/version") as resp:
            info["version"] = (await resp.text())[:200] if resp.status == 200 else None
    except aiohttp.ClientError as exc:
        raise TrtbuildError(f"cannot reach {url} ({type(exc).__name__}: {exc}); is the server running?") from None
    extensions = {"ignore_eos": True, "continuous_usage_stats": True}
    probe_req = BenchRequest(-1, [1, 1032], "Hello", 2)
    where = url + PATHS[endpoint]
    for drop in (None, "continuous_usage_stats", "ignore_eos"):
        if drop:
            extensions[drop] = False
        body = request_body(probe_req, model, WorkloadSpec(endpoint=endpoint), extensions, "text")
        async with session.post(where, json=body) as resp:
            await resp.read()
            if resp.status == 200:
                info["extensions"] = extensions
                return info
            if resp.status not in (400, 422):  # 422: FastAPI's validation error (transformers serve)
                raise TrtbuildError(f"{where} answered HTTP {resp.status} to a probe request; "
                                    "check --url, --model, --endpoint and the API key")
    raise TrtbuildError(f"{where} rejects streaming requests (HTTP 400); is it OpenAI-compatible?")


def resolve_target_engine(ws: Workspace, model: str, engine_dir: str | Path | None) -> Path | None:
    """The workspace engine behind the served model: given explicitly, or one whose name is the model id."""
    if engine_dir:
        return ws.resolve_engine(engine_dir)
    return next((e for e in ws.engines() if e.name == model), None)


def make_issue(client, urls, path, model, spec, extensions, prompt_format, texts, bar, clock=CLOCK):
    """The runner's issue(request, record, t0) for this client: one streaming request, round-robin over urls."""
    async def issue(req: BenchRequest, rec: RequestRecord, t0: int) -> None:
        body = request_body(req, model, spec, extensions, prompt_format)
        await stream_completion(client, urls[req.index % len(urls)], path, body, rec, t0, texts, clock)
        if bar is not None:
            bar.update(1)

    return issue


async def _run_online(urls, model, spec, loads, api_key, prompt_format, timeout_s, progress, tokenizer, trials=1,
                      workers=None):
    requests = build_requests(tokenizer, spec)
    path = PATHS[spec.endpoint]
    n_workers = auto_workers(loads) if workers is None else workers
    out = []
    # aiohttp probes the servers (a few plain requests); the load's streams go through StreamClient
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     headers=_headers(api_key)) as session:
        servers = [await probe(session, url, model, api_key, spec.endpoint) for url in urls]
        extensions = {k: all(s["extensions"][k] for s in servers) for k in servers[0]["extensions"]}
        workers_pool = None
        client = StreamClient(_headers(api_key), timeout_s)  # the streamed requests' own connections
        if n_workers > 1:
            config = ClientConfig(urls, model, spec, extensions, prompt_format, api_key, timeout_s)
            workers_pool = WorkerPool(n_workers, config)
        try:
            for trial in range(trials):
                for i in interleave(list(range(len(loads))), trial):
                    load = loads[i]
                    texts: dict[int, str] = {}
                    label = f"bench {model} {load.level:g}" + (f" trial {trial + 1}/{trials}" if trials > 1 else "")
                    bar = tqdm(total=len(requests), desc=label, unit="req", disable=not progress, leave=False)
                    per_worker = None
                    if workers_pool is None:
                        issue = make_issue(client, urls, path, model, spec, extensions, prompt_format, texts, bar)
                        with EnvironmentMonitor() as env:
                            records, monitor = await run_load(requests, load, issue, clock=CLOCK)
                        texts = settle_texts(texts)
                    else:
                        with EnvironmentMonitor(own_pids=workers_pool.pids) as env:
                            parts = await asyncio.get_running_loop().run_in_executor(
                                None, workers_pool.run, requests, load, bar.update)
                        records, texts, per_worker = merge(parts)
                        monitor = PooledMonitor([mon for _, mon in per_worker])
                    bar.close()
                    out.append((i, load, records, monitor, texts, env.result, per_worker))
        finally:
            client.close()
            if workers_pool is not None:
                workers_pool.close()
    return servers, extensions, out, n_workers


def run_online_bench(ws: Workspace, urls: list[str], model: str, workload: WorkloadSpec, loads: list[LoadSpec],
                     slo: SLO | None = None, *, api_key: str | None = None, prompt_format: str = "text",
                     engine_dir: str | Path | None = None, timeout_s: float = 600.0, progress: bool = True,
                     out_dir: str | Path | None = None, trials: int = 1, client_workers=None) -> list[BenchResult]:
    """Benchmark an OpenAI-compatible endpoint (urls: replicas, round-robin) at each load level;
    workload.endpoint picks /v1/completions (default) or /v1/chat/completions. Each level runs `trials`
    times (levels interleaved) and its trials are merged into one run (trtbuild/bench/trials.py).

    Runs are saved under ws.bench_dir(engine) when the model is a workspace engine (or engine_dir is
    given), else under <workspace>/bench/. client_workers: client processes (None or "auto": by
    concurrency, trtbuild/bench/workers.py)."""
    workers = parse_workers(client_workers)
    if not urls:
        raise TrtbuildError("give at least one --url")
    if prompt_format not in ("text", "ids"):
        raise TrtbuildError(f"--prompt-format must be text or ids, got {prompt_format!r}")
    workload = dataclasses.replace(workload, endpoint=workload.endpoint or "completions")  # recorded as sent
    if workload.endpoint not in PATHS:
        raise TrtbuildError(f"--endpoint must be completions or chat, got {workload.endpoint!r}")
    if workload.endpoint == "chat" and prompt_format == "ids":
        raise TrtbuildError("--prompt-format ids applies to --endpoint completions only: a chat message is text "
                            "(the server applies its chat template); drop it")
    urls = [u.rstrip("/").removesuffix("/v1") for u in urls]
    for load in loads:
        load.check()
    if trials < 1:
        raise TrtbuildError(f"--trials must be >= 1, got {trials}")
    tokenizer = Tokenizer.v3()
    servers, extensions, runs, n_workers = run_client(
        _run_online(urls, model, workload, loads, api_key, prompt_format, timeout_s, progress, tokenizer, trials,
                    workers))
    engine = resolve_target_engine(ws, model, engine_dir)
    base = Path(out_dir) if out_dir else (ws.bench_dir(engine) if engine else ws.root / "bench")
    target = {"kind": "endpoint", "name": engine.name if engine else model, "model": model, "urls": urls,
              "servers": servers, "extensions": extensions, "prompt_format": prompt_format,
              "engine_dir": str(engine) if engine else None, "manifest": None, "client_workers": n_workers}
    if engine is not None:
        from trtbuild.manifest import load_manifest

        target["manifest"] = load_manifest(engine).to_dict()
    per_level: dict[int, list[BenchResult]] = {}
    for i, load, records, monitor, texts, env, per_worker in runs:
        for rec in records:  # re-tokenize after the run, off the client's hot path
            if rec.index in texts:
                rec.token_counts["client"] = len(tokenizer.encode(texts[rec.index], bos=False))
            rec.token_counts.setdefault("usage", None)
        trial = summarize("online", workload, load, target, records, monitor, slo, workers=per_worker)
        trial.summary.environment = env
        per_level.setdefault(i, []).append(trial)
    results = []
    for i in sorted(per_level):
        result = merge_trials(per_level[i], slo)
        save_run(ws, base / result.summary.run_id, result)
        results.append(result)
    return results
