"""trtbuild.bench.http, the online bench's streaming client, against a raw asyncio server that writes exact
bytes: chunked bodies decoded as they arrive, keep-alive reuse, error statuses, a connection closed
mid-body, timeouts, a kept-alive connection the server closed before its reuse, and a body that ends
with the connection."""

from __future__ import annotations

import asyncio
import json

import pytest

from trtbuild.bench.http import HTTPStatusError, StreamClient


async def serve(answer):
    """A server whose handler `answer(request_bytes, writer, n)` writes the n-th response of a connection;
    returns (url, server, connections opened so far)."""
    opened = [0]

    async def handle(reader, writer):
        opened[0] += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                body = await reader.readexactly(length)
                if not await answer(head + body, writer, n):
                    break
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", server, opened


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_chunked_bodies_arrive_decoded_piece_by_piece_over_one_kept_alive_connection():
    requests = []

    async def answer(request, writer, n):
        requests.append(request)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: a\n\n", b"data: bb\n\n"):
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.02)  # two reads on the client's side
        writer.write(b"0\r\n\r\n")
        return True

    async def main():
        url, server, opened = await serve(answer)
        client = StreamClient({"Authorization": "Bearer k"}, timeout_s=10)
        pieces = []
        for _ in range(3):  # under a gateway's path prefix, as `trtbuild bench --url http://host/prefix` sends
            await client.post(url + "/prefix/", "/v1/completions", b'{"x": 1}', pieces.append)
        client.close()
        server.close()
        return pieces, opened[0]

    pieces, opened = run(main())
    assert pieces == [b"data: a\n\n", b"data: bb\n\n"] * 3  # framing removed, each piece when it came
    assert opened == 1  # three requests, one connection
    head, _, body = requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /prefix/v1/completions HTTP/1.1\r\n") and body == b'{"x": 1}'
    assert b"\r\nAuthorization: Bearer k" in head and b"\r\nContent-Type: application/json" in head


def test_an_error_status_raises_with_its_body_and_the_sink_sees_nothing():
    async def answer(request, writer, n):
        body = b'{"error": {"message": "overloaded"}}'
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
        return True

    async def main():
        url, server, _ = await serve(answer)
        client = StreamClient(timeout_s=10)
        pieces = []
        with pytest.raises(HTTPStatusError) as info:
            await client.post(url, "/v1/completions", b"{}", pieces.append)
        client.close()
        server.close()
        return info.value, pieces

    error, pieces = run(main())
    assert error.status == 429 and b"overloaded" in error.body and pieces == []


def test_a_connection_closed_mid_body_is_a_connection_error():
    async def answer(request, writer, n):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        return False  # then close, the body unfinished

    async def main():
        url, server, _ = await serve(answer)
        client = StreamClient(timeout_s=10)
        pieces = []
        with pytest.raises(ConnectionError):
            await client.post(url, "/v1/completions", b"{}", pieces.append)
        client.close()
        server.close()
        return pieces

    assert run(main()) == [b"hello"]


def test_a_silent_server_times_out_and_its_connection_is_not_reused():
    answered = []

    async def answer(request, writer, n):
        answered.append(n)
        if len(answered) == 1:
            await asyncio.sleep(5)  # the first request is never answered in time
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async def main():
        url, server, opened = await serve(answer)
        client = StreamClient(timeout_s=0.3)
        with pytest.raises(TimeoutError):
            await client.post(url, "/v1/completions", b"{}", lambda _: None)
        pieces = []
        await client.post(url, "/v1/completions", b"{}", pieces.append)
        client.close()
        server.close()
        return pieces, opened[0]

    pieces, opened = run(main())
    assert pieces == [b"ok"] and opened == 2  # a fresh connection for the second request


def test_a_kept_alive_connection_closed_by_the_server_is_replaced_once():
    async def answer(request, writer, n):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        return False  # keep-alive offered, but the server closes it (as at its idle timeout)

    async def main():
        url, server, opened = await serve(answer)
        client = StreamClient(timeout_s=10)
        pieces = []
        await client.post(url, "/v1/completions", b"{}", pieces.append)
        await asyncio.sleep(0)  # the close may or may not have been read before the reuse: both must work
        await client.post(url, "/v1/completions", b"{}", pieces.append)
        client.close()
        server.close()
        return pieces, opened[0]

    pieces, opened = run(main())
    assert pieces == [b"ok", b"ok"] and opened == 2


def test_a_body_without_length_or_chunks_ends_when_the_server_closes():
    async def answer(request, writer, n):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        writer.write(b"data: a\n\n")
        await writer.drain()
        return False  # the close ends the body

    async def main():
        url, server, _ = await serve(answer)
        client = StreamClient(timeout_s=10)
        pieces = []
        await client.post(url, "/v1/completions", b"{}", pieces.append)
        client.close()
        server.close()
        return pieces

    assert run(main()) == [b"data: a\n\n"]


def recorded(reads: list[bytes], transport_error: tuple[str, str] | None = None):
    """A StreamRecorder fed `reads` at clock ticks 10, 20, 30, ..., then settled: (record, text)."""
    from trtbuild.bench.online import StreamRecorder, settle_texts
    from trtbuild.bench.results import RequestRecord

    ticks = iter(range(10, 10_000, 10))
    rec = RequestRecord(index=7)
    recorder = StreamRecorder(rec, 0, lambda: next(ticks))
    for data in reads:
        recorder.feed(data)
    assert rec.chunk_ns == [] and rec.token_counts == {}  # nothing is parsed while the load runs
    if transport_error:
        rec.error_type, rec.error = transport_error
    texts: dict = {}
    recorder.finish(texts)
    return rec, settle_texts(texts)[7]


def event(text: str, done: int | None = None, finish: str | None = None) -> bytes:
    usage = None if done is None else {"prompt_tokens": 3, "completion_tokens": done, "total_tokens": 3 + done}
    return b"data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": finish}],
                                   "usage": usage}).encode() + b"\n\n"


def test_reads_are_stamped_as_they_come_and_parsed_after_the_load():
    """Each content event gets the stamp of the read that completed it, however the bytes were split;
    continuous usage gives the tokens of each chunk; a chat role chunk carries no token."""
    a, b, c = event(" one", 1), event(" two three", 3), event("", 3, "length")
    rec, text = recorded([a[:9], a[9:] + b[:4], b[4:], c + b"data: [DONE]\n\n"])
    assert text == " one two three"
    assert rec.first_byte_ns == 10 and rec.chunk_ns == [20, 30]
    assert rec.chunk_tokens == [1, 2] and rec.token_counts == {"usage": 3} and rec.prompt_tokens_usage == 3
    assert rec.finish_reason == "length" and rec.error_type is None
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    chat = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    rec, text = recorded([role, chat])
    assert text == "Hi" and rec.chunk_ns == [20] and rec.chunk_tokens is None  # no usage: the split is unknown


def test_stream_errors_garbage_and_empty_streams_become_the_records_error():
    rec, _ = recorded([event(" a", 1), b'data: {"error": {"message": "engine failed"}}\n\n'])
    assert (rec.error_type, rec.error) == ("stream_error", "engine failed") and rec.chunk_ns == [10]
    rec, _ = recorded([event(" a", 1), b"data: {not json\n\n", event(" b", 2)])
    assert rec.error_type == "bad_response" and rec.chunk_ns == [10]  # nothing after it is trusted
    rec, _ = recorded([b"data: [DONE]\n\n"])
    assert rec.error_type == "empty_response"
    # the transport's error came last (the stream was cut after the server's error event): it stays
    rec, _ = recorded([b'data: {"error": {"message": "x"}}\n\n'], ("connection", "ConnectionResetError"))
    assert (rec.error_type, rec.error) == ("connection", "ConnectionResetError")
