"""The streaming hot path without a server: SSE chunks with continuous usage (vLLM's
stream_options.continuous_usage_stats), and the engine-thread -> event-loop hand-off (LoopWaker)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import types

from trtbuild.runtime.interface import LoopWaker, RequestStream, SamplingParams, TokenEvent, batched_wakeups
from trtbuild.server.generate import SSEResponse, sse_events
from trtbuild.server.limits import BodyWriter
from trtbuild.server.render import DONE, Renderer, TokenTexts


def events(*texts, finish=None):
    out = [TokenEvent(token_id=100 + i, index=i, text=t) for i, t in enumerate(texts)]
    out[-1].finish_reason = finish
    return out


def parse(chunk: str) -> dict:
    assert chunk.startswith("data: ") and chunk.endswith("\n\n")
    return json.loads(chunk[6:])


def test_continuous_usage_counts_the_tokens_of_every_chunk(tokenizer):
    for chat in (False, True):
        r = Renderer(chat, "m", TokenTexts(tokenizer), logprobs=False, include_usage=True, continuous_usage=True,
                     prompt_tokens=7)
        chunks = [r.role_chunk(0)] if chat else []
        chunks += [r.delta_chunk(0, events(" a"), None), r.delta_chunk(0, events(" b", " c", ""), None),
                   r.delta_chunk(0, events(" d", finish="length"), "length")]
        usages = [parse(c)["usage"] for c in chunks]
        assert [u["completion_tokens"] for u in usages] == ([0] if chat else []) + [1, 4, 5]
        assert all(u["prompt_tokens"] == 7 and u["total_tokens"] == 7 + u["completion_tokens"] for u in usages)
        text = [parse(c)["choices"][0] for c in chunks[1 if chat else 0:]]
        assert "".join(c["delta"]["content"] if chat else c["text"] for c in text) == " a b c d"
        assert parse(r.usage_chunk(7, 5))["usage"]["completion_tokens"] == 5


def test_without_continuous_usage_chunks_carry_usage_null_or_nothing(tokenizer):
    with_usage = Renderer(False, "m", TokenTexts(tokenizer), False, include_usage=True)
    assert parse(with_usage.delta_chunk(0, events(" a"), None))["usage"] is None
    plain = Renderer(False, "m", TokenTexts(tokenizer), False, include_usage=False)
    assert "usage" not in parse(plain.delta_chunk(0, events(" a"), None))


def test_a_step_of_tokens_wakes_a_loop_once_and_every_consumer_sees_its_tokens(tokenizer):
    """Engine side emits one token into each of 20 streams inside batched_wakeups(), 5 times; the loop's
    consumers (aiter_batches) get every token, and the loop was woken once per step, not per token."""
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    streams = [RequestStream(tokenizer, [1, 1032], params, max_seq_len=100) for _ in range(20)]
    calls, seen = [], []

    async def main():
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe

        def counting(callback, *args, **kw):
            calls.append(callback)
            return original(callback, *args, **kw)

        loop.call_soon_threadsafe = counting

        async def consume(stream):
            got = []
            async for batch in stream.aiter_batches():
                got += [e.token_id for e in batch]
                seen.append(len(batch))
            return got

        tasks = [asyncio.ensure_future(consume(s)) for s in streams]
        await asyncio.sleep(0.05)  # every consumer is waiting
        stepped = []

        def engine():
            for step in range(5):
                with batched_wakeups():
                    for s in streams:
                        s.emit_token(1000 + step)
                stepped.append(step)
                deadline = time.monotonic() + 30
                while sum(seen) < 20 * (step + 1) and time.monotonic() < deadline:  # every consumer got it
                    threading.Event().wait(0.001)

        thread = threading.Thread(target=engine)
        thread.start()
        results = await asyncio.gather(*tasks)
        thread.join()
        return results

    results = asyncio.run(main())
    assert results == [[1000, 1001, 1002, 1003, 1004]] * 20
    assert len(calls) == 5  # one wake-up per step for 20 streams


def test_a_closed_loop_is_skipped():
    loop = asyncio.new_event_loop()
    waker = LoopWaker.of(loop)
    loop.close()
    waker.wake(lambda: None)  # no exception: the consumer is gone
    assert not waker._scheduled


def test_observe_many_equals_one_observe_per_value():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from trtbuild.server.metrics import ITL_BUCKETS, observe_many

    values = [0.0005, 0.001, 0.0011, 0.01, 0.0100001, 0.3, 2.5, 9.0, 0.02] * 3
    texts = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        hist = Histogram("itl_seconds", "x", buckets=ITL_BUCKETS, registry=registry)
        if bulk:
            observe_many(hist, values)
        else:
            for v in values:
                hist.observe(v)
        texts.append([line for line in generate_latest(registry).decode().splitlines() if "_created" not in line])
    assert texts[0] == texts[1] and 'itl_seconds_bucket{le="+Inf"} 27.0' in texts[1]


class Writer:
    """A writer as write_directly sees one (trtbuild.server.limits.BodyWriter), over a list: `takes(data,
    end)` says whether the socket takes this write now."""

    def __init__(self, takes=lambda data, end: True):
        self.takes, self.written, self.ended = takes, [], False

    def write(self, data: bytes) -> bool:
        if not self.takes(data, False):
            return False
        self.written.append(data.decode())
        return True

    def end(self, data: bytes) -> bool:
        if not self.takes(data, True):
            return False
        self.written.append(data.decode())
        self.ended = True
        return True


def body_of(tokenizer, writer: Writer | None, words=12, tokens=None, finish=None):
    """One streamed completion whose tokens an engine thread emits while its SSE body is being made:
    (chunks the generator yielded, the text). `finish(stream)` ends it instead of its last token."""
    ids = tokens or tokenizer.encode(" ".join(["river", "market", "salt"] * 4), bos=False)[:words]
    params = SamplingParams(max_tokens=len(ids), temperature=0, ignore_eos=True)
    stream = RequestStream(tokenizer, [1, 1032], params, max_seq_len=100)
    renderer = Renderer(False, "m", TokenTexts(tokenizer), logprobs=False, include_usage=True, continuous_usage=True,
                        prompt_tokens=2)

    def engine():
        for i, token in enumerate(ids):
            time.sleep(0.002)  # a few engine steps, so some chunks find the writer listening
            with batched_wakeups():
                if finish is not None and i == len(ids) - 1:
                    finish(stream)
                else:
                    stream.emit_token(token)

    async def main():
        thread = threading.Thread(target=engine)
        thread.start()
        try:
            state = types.SimpleNamespace(shutting_down=True)  # (what an aborted stream's error message reads)
            return [c async for c in sse_events(state, renderer, [stream], 2, True, write_now=writer)]
        finally:
            thread.join()

    return asyncio.run(main()), tokenizer.decode(ids)


def texts_and_usage(chunks: list[str]) -> tuple[str, list[int]]:
    body = "".join(chunks)
    assert body.endswith(DONE) and body.count(DONE) == 1
    events = [json.loads(e[6:]) for e in body.split("\n\n") if e.startswith("data: {")]
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    return text, [e["usage"]["completion_tokens"] for e in events]


def test_direct_writes_carry_the_same_body_as_the_awaiting_path(tokenizer):
    """write_directly (chunks written from the engine's wake-up) and the generator path give one body:
    the same text, usage counting up to the last token, the end with usage and [DONE] in one write (the
    writer's end()); where the writer refuses a chunk (the socket pushes back) that chunk and the rest go
    the awaiting way, in order; a refused end is yielded, once."""
    plain, text = body_of(tokenizer, None)
    text = " " + text  # the first token's space, as after the prompt
    assert texts_and_usage(plain)[0] == text

    writer = Writer()
    rest, _ = body_of(tokenizer, writer)
    assert rest == [] and writer.ended  # every chunk, the end too, was written directly
    assert writer.written[-1].endswith(DONE) and DONE not in "".join(writer.written[:-1])
    got, usage = texts_and_usage(writer.written)
    assert got == text and usage == sorted(usage) and usage[-1] == 12  # the usage chunk counts every token once

    third = Writer(lambda data, end: len(third.written) != 2)  # the third write is refused
    rest, _ = body_of(tokenizer, third)
    assert len(third.written) == 2 and not third.ended and rest
    got, usage = texts_and_usage(third.written + rest)
    assert got == text and usage == sorted(usage) and usage[-1] == 12

    no_end = Writer(lambda data, end: not end)  # every chunk taken, the end refused: the generator yields it
    rest, _ = body_of(tokenizer, no_end)
    assert not no_end.ended and len(rest) == 1 and rest[0].endswith(DONE)
    got, usage = texts_and_usage(no_end.written + rest)
    assert got == text and usage == sorted(usage) and usage[-1] == 12


def test_a_failed_stream_ends_the_awaiting_way_with_its_error_event(tokenizer):
    """An aborted or failed stream is not ended by the writer: the generator yields the error event and
    [DONE] after the text written so far."""
    for finish, code in ((lambda s: s.finish("error", "the engine failed"), "engine_error"),
                         (lambda s: s.cancel(), "service_unavailable")):
        writer = Writer()
        rest, _ = body_of(tokenizer, writer, words=6, finish=finish)
        assert not writer.ended and len(rest) == 1 and rest[0].endswith(DONE)
        error = [json.loads(e[6:]) for e in rest[0].split("\n\n") if e.startswith("data: {")][-1]
        assert error["error"]["code"] == code and writer.written  # the text before it was written directly


def uvicorn_cycle():
    """A real uvicorn RequestResponseCycle over a transport that keeps what is written."""
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    class Transport:
        def __init__(self):
            self.data, self.closed = [], False

        def write(self, data):
            self.data.append(bytes(data))

        def is_closing(self):
            return self.closed

        def close(self):
            self.closed = True

        def pause_reading(self):
            pass

        def resume_reading(self):
            pass

    transport, completed = Transport(), []
    c = RequestResponseCycle(scope={"method": "POST", "type": "http", "http_version": "1.1"}, transport=transport,
                             flow=FlowControl(transport), logger=None, access_logger=None, access_log=False,
                             default_headers=[], message_event=asyncio.Event(), expect_100_continue=False,
                             keep_alive=True, on_response=lambda: completed.append(True))
    return c, transport, completed


def test_the_body_writer_writes_what_uvicorns_send_writes_and_refuses_what_it_cannot():
    """trtbuild.server.limits.BodyWriter against a real uvicorn RequestResponseCycle: the same bytes as
    `send` writes for a chunk and for the body's end, the same completion (the connection's next request
    may start), and no write (False) where send would wait or do more."""
    async def main():
        (by_send, t1, done1), (cycle, t2, done2) = uvicorn_cycle(), uvicorn_cycle()
        direct = BodyWriter(cycle)
        assert not direct.write(b"data: x\n\n") and not direct.end(b"x")  # no response head yet
        for c in (by_send, cycle):
            await c.send({"type": "http.response.start", "status": 200, "headers": []})
        await by_send.send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        assert direct.write(b"data: x\n\n")
        assert t1.data == t2.data and t2.data[-1] == b"9\r\ndata: x\n\n\r\n"
        assert not direct.write(b"")  # an empty chunk would end a chunked body
        cycle.flow.write_paused = True
        assert not direct.write(b"y") and not direct.end(b"y")  # bytes left unsent: send would wait
        cycle.flow.write_paused = False
        cycle.disconnected = True
        assert not direct.write(b"y") and not direct.end(b"y")
        cycle.disconnected = False
        assert len(t2.data) == 2 and not direct.ended  # head, one chunk: nothing written by a refusal

        await by_send.send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        assert direct.end(b"data: [DONE]\n\n") and direct.ended
        assert t1.data == t2.data and t2.data[-1].endswith(b"\r\n0\r\n\r\n")
        assert cycle.response_complete and done2 == done1 == [True] and cycle.message_event.is_set()
        assert not direct.write(b"y") and not direct.end(b"y")  # the response is complete
        assert len(t2.data) == 3

    asyncio.run(main())


def test_the_sse_response_ends_quietly_when_the_client_leaves_and_passes_on_other_cancellations():
    """SSEResponse runs its body in the request's own task and a watcher cancels it on http.disconnect:
    then the response just ends (cleanup ran, the task is not left cancelling); a cancellation from
    elsewhere (the server shutting down) still reaches the caller, after cleanup."""
    async def stalled(write_now):  # a body waiting for tokens that never come
        yield "data: first\n\n"
        await asyncio.Event().wait()

    async def respond(disconnect_after: float | None):
        cleaned, sent = [], []
        gone = asyncio.Event()

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        response = SSEResponse(stalled, cleanup=lambda: cleaned.append(True))
        task = asyncio.ensure_future(response({"type": "http"}, receive, send))
        await asyncio.sleep(0.05)
        if disconnect_after is not None:
            gone.set()
        else:
            task.cancel()
        try:
            await asyncio.wait_for(task, 1)
            outcome = "returned"
        except asyncio.CancelledError:
            outcome = "cancelled"
        return outcome, cleaned, task.cancelling(), [m.get("body", b"") for m in sent]

    outcome, cleaned, cancelling, bodies = asyncio.run(respond(disconnect_after=0.05))
    assert (outcome, cleaned, cancelling) == ("returned", [True], 0)
    assert bodies == [b"", b"data: first\n\n"]  # the head, the first chunk; nothing after the client left
    outcome, cleaned, _, _ = asyncio.run(respond(disconnect_after=None))
    assert (outcome, cleaned) == ("cancelled", [True])
