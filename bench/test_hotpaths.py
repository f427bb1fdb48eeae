"""pytest-benchmark suite for the toolkit's own hot paths: `pytest bench --benchmark-only`.

What a benchmark client does per streamed chunk (SSE parsing), what a server does per token
(incremental detokenization), and what every run does at the end (statistics over all requests).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from trtbuild.bench import metrics
from trtbuild.bench.results import RequestRecord
from trtbuild.bench.sse import SSEParser
from trtbuild.runtime.detok import TextStream
from trtbuild.tokenizer import Tokenizer

CHUNK = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
         "choices": [{"index": 0, "text": " token", "logprobs": None, "finish_reason": None}],
         "usage": {"prompt_tokens": 128, "completion_tokens": 7, "total_tokens": 135}}


@pytest.fixture(scope="module")
def stream_bytes() -> list[bytes]:
    """1000 SSE events as a socket might deliver them: 1460-byte TCP segments cutting events anywhere."""
    body = b"".join(b"data: " + json.dumps(CHUNK).encode() + b"\n\n" for _ in range(1000)) + b"data: [DONE]\n\n"
    return [body[i:i + 1460] for i in range(0, len(body), 1460)]


def test_sse_parse_1000_events(benchmark, stream_bytes):
    def parse():
        parser, n = SSEParser(), 0
        for segment in stream_bytes:
            for payload in parser.feed(segment):
                if payload != "[DONE]":
                    json.loads(payload)
                    n += 1
        return n

    assert benchmark(parse) == 1000


def test_sse_parse_one_event_per_read(benchmark):
    event = b"data: " + json.dumps(CHUNK).encode() + b"\n\n"

    def parse():
        parser = SSEParser()
        return sum(len(parser.feed(event)) for _ in range(1000))

    assert benchmark(parse) == 1000


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.v3()


def test_incremental_detokenization_256_tokens(benchmark, tokenizer):
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 30, bos=False)[:256]

    def detok():
        stream = TextStream(tokenizer, context_ids=[], stop=["</end>"])
        text = "".join(stream.push(t) for t in ids)
        return text + stream.flush()

    assert benchmark(detok) == tokenizer.decode(ids)


def test_statistics_over_10k_requests(benchmark):
    rng = np.random.default_rng(0)
    records = []
    for i in range(10_000):
        sent = int(i * 1e6)
        gaps = rng.gamma(2.0, 5e6, size=32).astype(np.int64)
        chunks = (sent + 50_000_000 + np.cumsum(gaps)).tolist()
        records.append(RequestRecord(index=i, sent_ns=sent, scheduled_ns=sent, chunk_ns=chunks, chunk_tokens=[1] * 32,
                                     end_ns=chunks[-1], input_tokens=128, output_tokens=32))
    out = benchmark(metrics.compute, records, metrics.SLO(ttft_ms=100, tpot_ms=20))
    assert out["counts"]["succeeded"] == 10_000 and out["latency_ms"]["itl_token"]["n"] == 10_000 * 31
