"""The streaming hot path without a server: SSE chunks with continuous usage (vLLM's
stream_options.continuous_usage_stats), and the engine-thread -> event-loop hand-off (LoopWaker)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from trtbuild.runtime.interface import LoopWaker, RequestStream, SamplingParams, TokenEvent, batched_wakeups
from trtbuild.server.render import Renderer, TokenTexts


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
    waker.wake(asyncio.Event())  # no exception: the consumer is gone
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
