"""/v1/chat/completions and /v1/completions: request -> prompt ids -> engine streams -> JSON or SSE.

The flow of one request, cheap checks first:
1. model, request-level rules, admission (429 when the bounded queue has no room: before tokenizing);
2. encode the prompt(s) (chat through mistral-common; too many characters: 400 before tokenizing; large
   prompts off the event loop), check the context length, build one SamplingParams per choice;
   then submit every sequence (ServerState.submit admits again: the queue may have filled meanwhile);
3. non-streaming: wait for all results, racing the client's disconnect;
   streaming: send one SSE chunk per batch of tokens that arrived together, so a busy server sends at
   most one event per request per engine step: written from the engine's wake-up while the socket takes
   them (write_directly), else awaited (RequestStream.aiter_batches);
4. always (finished, failed, or the client left): cancel what still runs, free the admission slots,
   record metrics and the access-log fields.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable, Protocol, Sequence

from fastapi import Request
from starlette.responses import Response

from trtbuild.runtime.interface import GenerationResult, RequestStream
from trtbuild.server.errors import bad_request, engine_failure, json_response, unavailable
from trtbuild.server.guards import OFFLOAD_CHARS, check_chars, check_context, off_loop
from trtbuild.server.middleware import AccessRecord
from trtbuild.server.prompts import encode_chat, encode_text
from trtbuild.server.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from trtbuild.server.plan import RequestPlan
from trtbuild.server.render import DONE, Renderer, sse
from trtbuild.server.state import ServerState

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
FAILURES = ("error", "abort")  # the finish reasons whose stream ends with an error event, not a finish_reason


class WriteNow(Protocol):
    """Writes the body now if the socket takes it (True), else does nothing (trtbuild.server.limits.BodyWriter)."""
    ended: bool  # end() completed the response

    def write(self, data: bytes) -> bool: ...
    def end(self, data: bytes) -> bool: ...  # the last chunk and the end of the body


async def generate(request: Request, body: GenerationRequest) -> Response:
    state: ServerState = request.app.state.server
    engine = state.ready()
    state.check_model(body.model)
    body.check()
    chat = isinstance(body, ChatCompletionRequest)
    param = "messages" if chat else "prompt"
    plan = RequestPlan(body, engine.info.vocab_size, engine.info)  # tools, response_format, logit_bias, echo, best_of
    n = plan.sequences
    sequences = n if chat else n * len(body.prompts())
    if sequences > state.capacity:
        raise bad_request(f"This request asks for {sequences} sequences (prompts x n); the server runs at "
                          f"most {state.capacity} at once (max batch size + --max-queue).", param="n")
    state.admit(sequences)  # 429 now, before any tokenizing (and again at submit: the loop may have moved)
    prompts = await prompt_ids(state, body)
    max_tokens = body.requested_max_tokens()
    jobs = []
    for p, prompt in enumerate(prompts):
        params = [plan.adjust(body.sampling_params(len(prompt), engine.info, choice=p * n + c)) for c in range(n)]
        check_context(len(prompt), max_tokens, engine.info, chat)
        jobs += [(prompt, sp) for sp in params]
    prompt_tokens = sum(len(p) for p in prompts)
    renderer = plan.renderer(chat, state.model_name, state.token_texts, body.logprob_settings()[0],
                             body.include_usage, body.continuous_usage, prompt_tokens)
    if plan.echo_only and not body.stream:
        return json_response(await plan.response(engine, renderer, prompts, [], prompt_tokens))
    if plan.echo_only:  # streamed: the prompt chunks (finish_reason "length"), usage, [DONE]
        first = await plan.echo_chunks(engine, renderer, prompts)
        return SSEResponse(lambda _: sse_events(state, renderer, [], prompt_tokens, body.include_usage, first),
                           cleanup=lambda: None)
    streams = state.submit(engine, jobs, renderer.id, param)
    record = request.scope.get("trtbuild") or AccessRecord(renderer.id)
    if body.stream:
        first: Sequence[str] = ()
        if plan.echo_stream:  # the prompt chunks come first: scored (off the loop) while the generation runs,
            try:              # after submit's cheap checks; a failure is still a plain 4xx/5xx
                first = await plan.echo_chunks(engine, renderer, prompts)
            except BaseException:
                finish(state, streams, prompt_tokens, record)
                raise
        return SSEResponse(lambda write_now: sse_events(state, renderer, streams, prompt_tokens, body.include_usage,
                                                        first, write_now),
                           cleanup=lambda: finish(state, streams, prompt_tokens, record))
    try:
        results = await results_or_disconnect(request, streams)
    finally:
        finish(state, streams, prompt_tokens, record)
    if results is None:  # the client left; nobody reads this
        return Response(status_code=499)
    for result in results:
        check_result(state, result)
    return json_response(await plan.response(engine, renderer, prompts, results, prompt_tokens, streams))


async def prompt_ids(state: ServerState, body: GenerationRequest) -> list[list[int]]:
    """Token ids of each prompt: texts too long to fit refused by their length in characters first, large
    ones tokenized off the event loop (trtbuild.server.guards)."""
    tokenizer, info = state.engine.tokenizer, state.engine.info
    if isinstance(body, ChatCompletionRequest):
        chars = chat_chars(body)
        check_chars(chars, tokenizer, info, chat=True)
        return [await off_loop(chars + (OFFLOAD_CHARS if body.tools else 0), encode_chat, tokenizer,
                               body.messages, body.tools)]
    assert isinstance(body, CompletionRequest)
    prompts = []
    for p in body.prompts():
        if isinstance(p, list):  # token ids are used exactly as given (the engine checks their count)
            prompts.append(p)
            continue
        check_chars(len(p), tokenizer, info, chat=False)
        # A text prompt gets BOS like any Mistral prompt.
        prompts.append(await off_loop(len(p), encode_text, tokenizer, p))
    return prompts


def chat_chars(body: ChatCompletionRequest) -> int:
    """Characters of text in the messages: each appears in the prompt, so its tokens are at least this / 18."""
    total = 0
    for message in body.messages:
        content = message.content
        if isinstance(content, str):
            total += len(content)
        elif content:
            total += sum(len(part.text or "") for part in content)
    return total


def check_result(state: ServerState, result: GenerationResult) -> None:
    if result.finish_reason == "error":
        raise engine_failure(result.error or "unknown error")
    if result.finish_reason == "abort":
        raise unavailable(abort_message(state))


def abort_message(state: ServerState) -> str:
    if state.shutting_down:
        return "The request was cancelled: the server is shutting down."
    return "The request was aborted by the engine."


def finish(state: ServerState, streams: Sequence[RequestStream], prompt_tokens: int, record: AccessRecord) -> None:
    state.release(streams)
    state.metrics.observe(streams, prompt_tokens)
    record.prompt_tokens = prompt_tokens
    record.completion_tokens = sum(len(s.token_ids) for s in streams)
    record.finish_reasons = [s.finish_reason or "abort" for s in streams]
    firsts = [s.timings.first_token_ns for s in streams if s.timings.first_token_ns]
    if firsts:
        record.ttft_s = (min(firsts) - streams[0].timings.arrival_ns) / 1e9


async def results_or_disconnect(request: Request, streams: Sequence[RequestStream]) -> list[GenerationResult] | None:
    """All results, or None as soon as the client disconnects (its streams are then cancelled by finish)."""
    results = asyncio.ensure_future(all_results(streams))
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait((results, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (gone, results):
            if not task.done():
                task.cancel()
                # wait for the cancellation, so no task is left holding an exception nobody retrieves
                # ("_GatheringFuture exception was never retrieved" on every disconnect otherwise)
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return results.result() if results.done() and not results.cancelled() else None


async def all_results(streams: Sequence[RequestStream]) -> list[GenerationResult]:
    return [await s.aresult() for s in streams]  # each waits on its own stream: sequential is as fast


async def disconnected(request: Request) -> None:
    # The body was read already: the next message uvicorn delivers is http.disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


class SSEResponse(Response):  # a Response to FastAPI (returned as is); its own __init__ and __call__
    """The SSE response as a plain ASGI app (issue 13: the hot path of a busy server is one chunk per stream
    per engine step). Starlette's StreamingResponse sent each chunk through five `send` wrappers (its own,
    the exception layers', the middleware's) and a listener task group; here the response head goes
    through the app's chain (status, x-request-id, error handling), and the body bytes go straight to the
    server's `send` (ServerMiddleware puts it in the scope), or, where the HTTP protocol offers one
    (`trtbuild.write_body`, trtbuild.server.limits), to its synchronous writer (see write_directly). The
    final chunk, the usage chunk, [DONE] and the end of the body leave in one write (from the wake-up too,
    where the writer can). The body runs in the request's own task; a second task waits for the client's
    disconnect and cancels it when it comes.
    `cleanup` runs however the response ends (before the body ever started, too). `events(write_now)`
    makes the body's chunks."""

    media_type = "text/event-stream"
    HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               *((k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items())]
    status_code = 200

    def __init__(self, events: Callable[[WriteNow | None], AsyncIterator[str]], cleanup):  # noqa: D107
        self.events = events  # Response.__init__ would render a body: not called
        self.cleanup = cleanup
        self.background = None
        self.raw_headers = list(self.HEADERS)

    async def __call__(self, scope, receive, send):
        writer = scope.get("trtbuild.write_body")
        chunks = self.events(writer)
        task = asyncio.current_task()
        streaming, left = True, False

        async def watch() -> None:  # the body runs in this task; the client's disconnect cancels it
            nonlocal left
            await _wait_disconnect(receive)  # (uvicorn also says http.disconnect once the response is complete)
            if streaming and not (writer is not None and writer.ended):
                left = True
                task.cancel()

        gone = asyncio.ensure_future(watch())
        try:
            await self._stream(chunks, send, scope.get("trtbuild.send", send), writer)
        except asyncio.CancelledError:
            if not left or task.uncancel() > 0:  # not (only) ours: the server's shutdown, a timeout
                raise
        finally:
            streaming = False  # no await since the body ended: `watch` cannot have cancelled anything after it
            gone.cancel()
            self.cleanup()
            await chunks.aclose()  # a generator left suspended by the cancellation

    @staticmethod
    async def _stream(chunks: AsyncIterator[str], send, send_body, writer: WriteNow | None):
        await send({"type": "http.response.start", "status": 200, "headers": SSEResponse.HEADERS})
        async for chunk in chunks:
            last = chunk.endswith(DONE)  # sse_events ends with [DONE]: the end of the body rides along
            await send_body({"type": "http.response.body", "body": chunk.encode(), "more_body": not last})
            if last:
                return
        if writer is not None and writer.ended:  # the writer sent the end already
            return
        await send_body({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def sse_events(state: ServerState, renderer: Renderer, streams: Sequence[RequestStream], prompt_tokens: int,
                     include_usage: bool, first: Sequence[str] = (), write_now: WriteNow | None = None
                     ) -> AsyncIterator[str]:
    """The SSE body: role chunks (chat) or `first` (a streamed echo's prompts), one chunk per batch of events
    per choice, usage, [DONE]. With `write_now` (one choice), write_directly writes the chunks instead of
    yielding them, the end too unless the stream failed."""
    if renderer.chat:
        for index in range(len(streams)):
            yield renderer.role_chunk(index)
    for chunk in first:
        yield chunk
    failed, tail = None, ""
    single = len(streams) == 1  # the common case: no merging task and queue hop per chunk
    start = 0

    def usage() -> str:  # the usage chunk, where the request asked for one: part of the end, either way
        return renderer.usage_chunk(prompt_tokens, sum(len(s.token_ids) for s in streams)) if include_usage else ""

    if single and write_now is not None:
        start, pending, ended = await write_directly(streams[0], renderer, write_now, usage)
        if pending is not None:  # the writer refused it (the client reads slowly): send it the awaiting way
            yield pending
        if ended:
            return
    source = streams[0].aiter_batches(start) if single else merged_batches(streams)
    async with contextlib.aclosing(source) as batches:
        async for item in batches:
            index, events = (0, item) if single else item
            reason = events[-1].finish_reason
            if reason in FAILURES:
                failed = streams[index].error if reason == "error" else abort_message(state)
                reason = None  # text that came before the failure is still sent
            chunk = renderer.delta_chunk(index, events, reason)
            if chunk is not None:
                if reason is not None and single:  # the last chunk: it leaves with usage and [DONE], one write
                    tail = chunk
                    continue
                yield chunk
            if failed is not None:
                break
    if failed is not None:
        error = engine_failure(failed) if streams[index].finish_reason == "error" else unavailable(failed)
        tail += sse(error.body())
    else:
        tail += usage()
    yield tail + DONE


async def write_directly(stream: RequestStream, renderer: Renderer, write_now: WriteNow,
                         usage: Callable[[], str]) -> tuple[int, str | None, bool]:
    """Write the stream's chunks from the loop callback that the engine's wake-up runs (RequestStream.listen),
    while the socket takes them at once: no task wake-up, generator hop or ASGI message per chunk, which
    were most of the event loop's cost a token at 256 streams. The end (last chunk, `usage()`, [DONE], the
    body's end) leaves the same way, in one write: the client has it within the step that finished the
    stream, not after the request's task is woken behind every other callback of a busy loop (the next
    request of a closed-loop client waits for it). Returns how many events were consumed, the chunk the
    writer refused (if any: the awaiting path sends it) and whether that was the end (written or refused).
    A failure (error, abort) is left to the awaiting path, which renders its error event."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    seen, pending, ended = 0, None, False

    def on_events() -> None:
        nonlocal seen, pending, ended
        if done.done():
            return
        try:
            new = stream.events[seen:]  # no lock: a list slice is atomic under the GIL (see aiter_batches)
            if not new:
                return
            reason = new[-1].finish_reason  # only the last event of a stream has one
            if reason in FAILURES:
                done.set_result(None)
                return
            seen += len(new)
            chunk = renderer.delta_chunk(0, new, reason)
            if reason is not None:
                ended, chunk = True, (chunk or "") + usage() + DONE
                if not write_now.end(chunk.encode()):
                    pending = chunk
                done.set_result(None)
            elif chunk is not None and not write_now.write(chunk.encode()):
                pending = chunk
                done.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - a listener must not raise: the stream's task does
            if not done.done():
                done.set_exception(exc)

    stop = stream.listen(on_events)
    try:
        on_events()  # what arrived before the listener
        await done
    finally:
        stop()
    return seen, pending, ended


async def merged_batches(streams: Sequence[RequestStream]) -> AsyncIterator[tuple[int, list]]:
    """(choice index, events that arrived together) from all of a request's streams (n > 1), as they come."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for events in stream.aiter_batches():
                queue.put_nowait((index, events))
        finally:
            queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, events = await queue.get()
            if events is None:
                remaining -= 1
            else:
                yield index, events
    finally:
        for task in tasks:
            task.cancel()

