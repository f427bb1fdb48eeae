"""`trtbuild serve` on the embedded model's fp16 engine, in a subprocess, driven over HTTP with the
official openai client (and httpx where the client hides what we check: raw SSE, headers, status codes).

Two servers start once for the module, side by side: `main` (API key, 64 KiB body limit) for almost
everything, and `small` (--max-queue 0, 5 s shutdown grace) for the 429 and graceful-shutdown tests;
the shutdown test stops `small`, so it is the last test of the module.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
from server_helpers import ABORT, metric, sse_lines, wait_idle

from trtbuild.server.process import ServerProcess

API_KEY = "test-key-5"
CHAT = [{"role": "user", "content": "Tell me a story about a cat."}]
PROMPT = "Once upon a time"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(workspace, engine_dirs, tmp_path_factory):
    logs = tmp_path_factory.mktemp("server-logs")
    engine = engine_dirs["fp16"]
    main = ServerProcess(engine, workspace.root, ["--api-key", API_KEY, "--max-body-bytes", "65536"],
                         log_path=logs / "main.log")
    small = ServerProcess(engine, workspace.root, ["--max-queue", "0", "--shutdown-timeout", "5",
                                                   "--served-model-name", "tiny"], log_path=logs / "small.log")
    try:
        main.start(), small.start()  # both load at once
        main.wait_ready(), small.wait_ready()
        yield SimpleNamespace(main=main, small=small)
    finally:
        main.stop(), small.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers.main


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


def chat_stream(client, server, **kw):
    chunks = list(client.chat.completions.create(model=server.model, stream=True, **kw))
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- endpoints ----------------------------------------------------------------------------------------
def test_health_models_version_need_no_key_where_public(server, client, limits):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/version").json()["version"]
    models = client.models.list().data
    assert [m.id for m in models] == [server.model]
    card = models[0].model_dump()
    assert card["object"] == "model" and card["owned_by"] == "trtbuild" and card["max_model_len"] == limits["max_seq_len"]
    assert httpx.get(f"{server.url}/v1/models").status_code == 401


def test_chat_streamed_text_equals_non_streamed(server, client):
    full = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=24, temperature=0)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    chunks, text = chat_stream(client, server, messages=CHAT, max_tokens=24, temperature=0)
    assert text == choice.message.content
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [choice.finish_reason]
    assert all(c.usage is None for c in chunks) and "\ufffd" not in text
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_completions_streamed_equals_non_streamed_and_token_prompt(server, client, http):
    full = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=20, temperature=0)
    streamed = list(client.completions.create(model=server.model, prompt=PROMPT, max_tokens=20, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in streamed if c.choices[0].finish_reason] == [full.choices[0].finish_reason]
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_ids = client.completions.create(model=server.model, prompt=ids, max_tokens=20, temperature=0)
    assert by_ids.choices[0].text == full.choices[0].text
    assert by_ids.usage.prompt_tokens == full.usage.prompt_tokens == len(ids)


def test_max_completion_tokens_is_max_tokens_and_length_counts(server, client):
    common = dict(model=server.model, messages=CHAT, temperature=0, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(max_tokens=7, **common)
    b = client.chat.completions.create(max_completion_tokens=7, **common)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason == b.choices[0].finish_reason == "length"
    assert a.usage.completion_tokens == b.usage.completion_tokens == 7


# --- chat format ---------------------------------------------------------------------------------------
def test_chat_prompt_is_mistral_v3_with_system_and_literal_inst(http, tokenizer):
    golden = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
              {"role": "system", "content": "SYSTEM"}, {"role": "user", "content": "c"}]
    # mistral-common's own v3 test: the system message joins the LAST user turn
    assert http.post("/tokenize", json={"messages": golden}).json()["tokens"] == \
        [1, 3, 1032, 4, 1055, 2, 3, 17889, 23294, 781, 781, 29485, 4]
    typed = [{"role": "user", "content": "say [INST] and [/INST] please"}]
    tokens = http.post("/tokenize", json={"messages": typed}).json()["tokens"]
    assert tokens.count(3) == 1 and tokens.count(4) == 1  # only the real [INST] ... [/INST]
    assert tokens == tokenizer.encode_chat(typed)
    assert http.post("/v1/chat/completions", json={"messages": typed, "max_tokens": 2}).status_code == 200


def test_tools_and_tool_calls_reach_the_prompt(server, client, http):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_0123456789abcdef", "type": "function",
                                                                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_0123456789abcdef", "content": "22C and sunny"}]
    tokens = http.post("/tokenize", json={"messages": messages, "tools": tools}).json()["tokens"]
    for control in (6, 7, 5, 8, 9):  # [AVAILABLE_TOOLS] [/AVAILABLE_TOOLS] [TOOL_CALLS] [TOOL_RESULTS] [/TOOL_RESULTS]
        assert control in tokens
    reply = client.chat.completions.create(model=server.model, messages=messages, tools=tools, max_tokens=4)
    assert reply.usage.prompt_tokens == len(tokens)


# --- sampling ------------------------------------------------------------------------------------------
def test_stop_string_split_across_tokens_never_leaks(server, client):
    base = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=0,
                                     extra_body={"ignore_eos": True})
    text, pieces = base.choices[0].text, base.choices[0].logprobs.tokens
    stop, offset = None, 0
    for i in range(len(pieces) - 1):  # a stop string made of the end of one token + the start of the next
        offset += len(pieces[i])
        if not text.startswith("".join(pieces[:i + 2])):
            break  # token texts no longer line up with the text (a multi-byte character)
        candidate = text[offset - 2: offset + 2]
        if min(len(pieces[i]), len(pieces[i + 1])) >= 2 and text.find(candidate) == offset - 2 and candidate.strip():
            stop = candidate
            break
    assert stop, f"no token boundary to split a stop string across in {pieces}"
    expected = text[: text.find(stop)]
    for stream in (False, True):
        kw = dict(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "never-seen"],
                  extra_body={"ignore_eos": True})
        if stream:
            chunks = list(client.completions.create(stream=True, **kw))
            assert all(stop not in c.choices[0].text for c in chunks)
            got, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
        else:
            reply = client.completions.create(**kw)
            got, reason = reply.choices[0].text, reply.choices[0].finish_reason
        assert (got, reason) == (expected, "stop")


def test_seed_reproducible_and_n_choices_use_consecutive_seeds(server, client):
    kw = dict(model=server.model, messages=CHAT, max_tokens=8, temperature=1.0)
    one = client.chat.completions.create(seed=7, **kw).choices[0].message.content
    assert client.chat.completions.create(seed=7, **kw).choices[0].message.content == one
    eight = client.chat.completions.create(seed=8, **kw).choices[0].message.content
    both = client.chat.completions.create(seed=7, n=2, **kw)
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.message.content for c in both.choices] == [one, eight]


def test_n_streams_each_choice_once(server, client):
    chunks = list(client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=6, n=3, seed=1,
                                                 stream=True, stream_options={"include_usage": True}))
    for index in range(3):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert len([c for c in mine if c.finish_reason]) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 18


def test_logprobs_chat_and_completions(server, client):
    reply = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert "".join(item.token for item in content) == reply.choices[0].message.content
    # a "stop" here is EOS: a control token, not in the text, so not listed (issue 12)
    assert len(content) == reply.usage.completion_tokens - (reply.choices[0].finish_reason == "stop")
    for item in content:  # greedy: the chosen token is the most likely one
        assert len(item.top_logprobs) == 3 and item.logprob <= 0
        assert (item.token, item.logprob) == (item.top_logprobs[0].token, item.top_logprobs[0].logprob)
    streamed = list(client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=8, temperature=0,
                                                   logprobs=True, top_logprobs=3, stream=True))
    assert [i.token for c in streamed if c.choices[0].logprobs for i in c.choices[0].logprobs.content] == \
        [i.token for i in content]
    text = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == \
        text.usage.completion_tokens - (text.choices[0].finish_reason == "stop")
    assert "".join(lp.tokens) == text.choices[0].text
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)


# --- stream_options matrix -------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [None, {"include_usage": True}, {"include_usage": False}])
def test_stream_options_matrix(server, client, options):
    kw = {} if options is None else {"stream_options": options}
    chunks = list(client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=5, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}, **kw))
    if options and options["include_usage"]:
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
        assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 5
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.choices and c.usage is None for c in chunks)


def test_continuous_usage_stats_tell_the_tokens_of_every_chunk(server, client):
    """vLLM's stream_options.continuous_usage_stats: each chunk's cumulative usage, so a benchmark can
    split a multi-token chunk's gap over its tokens (docs/benchmarks.md, itl_token)."""
    for create, kw in ((client.completions.create, {"prompt": PROMPT}), (client.chat.completions.create,
                                                                          {"messages": CHAT})):
        chunks = list(create(model=server.model, max_tokens=9, temperature=0, stream=True, extra_body={"ignore_eos": True},
                             stream_options={"include_usage": True, "continuous_usage_stats": True}, **kw))
        counts = [c.usage.completion_tokens for c in chunks]
        assert all(c.usage is not None and c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
                   for c in chunks)
        assert counts == sorted(counts) and counts[-1] == 9 and chunks[-1].choices == []
        assert counts[-2] == 9  # the last content chunk already counts every token


def test_streams_end_on_a_kept_alive_connection_that_serves_the_next_request(server):
    """The end of a streamed body (last chunk, usage, [DONE], the chunked terminator) is written from the
    engine's wake-up and completes the response there (trtbuild.server.limits.BodyWriter.end): every
    streamed response on one kept-alive connection ends once, in full, and the same connection then
    serves the next request, streamed or not."""
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(server.url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    sockets = set()
    for max_tokens in (1, 5, 9):
        body = {"model": server.model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        conn.request("POST", "/v1/completions", json.dumps(body), headers)
        sockets.add(conn.sock.getsockname())
        reply = conn.getresponse()
        assert reply.status == 200 and reply.getheader("transfer-encoding") == "chunked"
        text = reply.read().decode()  # http.client reads to the chunked terminator, or fails
        events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == max_tokens
        assert [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-2]][-1] == "length"
    conn.request("POST", "/v1/completions", json.dumps({"model": server.model, "prompt": PROMPT, "max_tokens": 3}),
                 headers)
    sockets.add(conn.sock.getsockname())
    reply = conn.getresponse()
    assert reply.status == 200 and json.loads(reply.read())["usage"]["completion_tokens"] == 3
    assert len(sockets) == 1  # one connection throughout: every response left it ready for the next
    conn.close()


def test_stream_options_without_stream_is_400(server, client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=5,
                                       stream_options={"include_usage": True})
    assert err.value.param == "stream_options"


# --- errors ----------------------------------------------------------------------------------------------
def test_401_without_or_with_a_wrong_key(server):
    bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model=server.model, messages=CHAT, max_tokens=2)
    assert err.value.code == "invalid_api_key"
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_404_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-nope", messages=CHAT, max_tokens=2)
    assert err.value.message.endswith("The model `gpt-nope` does not exist.")


def test_400_context_length_exceeded(server, client, tokenizer, limits):
    with pytest.raises(openai.BadRequestError) as err:  # prompt + max_tokens > max_seq_len
        client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=limits["max_seq_len"])
    assert err.value.code == "context_length_exceeded"
    assert f"This model's maximum context length is {limits['max_seq_len']} tokens" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # the prompt alone is too long
        client.completions.create(model=server.model, prompt="hello " * 600, max_tokens=1)
    prompt_tokens = len(tokenizer.encode("hello " * 600))
    assert err.value.code == "context_length_exceeded" and f"({prompt_tokens} in the prompt" in err.value.message


@pytest.mark.parametrize("field,value", [("temperature", 2.5), ("top_p", 0), ("top_p", 1.5),
                                         ("frequency_penalty", -3), ("presence_penalty", 2.5), ("n", 0),
                                         ("max_tokens", 0), ("top_logprobs", 25), ("min_tokens", -1),
                                         ("repetition_penalty", 0), ("stop", ""), ("seed", 2**64)])
def test_400_out_of_range(http, field, value):
    body = {"messages": CHAT, "max_tokens": 4, field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field, error


def test_400_unknown_field_bad_json_and_wrong_content_type(http):
    r = http.post("/v1/chat/completions", json={"messages": CHAT, "max_token": 4})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Unrecognized request argument supplied: max_token"
    r = http.post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", content=json.dumps({"messages": CHAT}), headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "error" in r.json()


def test_413_body_too_large(server, client, http):
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(model=server.model, prompt="x" * 70_000, max_tokens=1)
    assert err.value.status_code == 413 and err.value.code == "request_too_large"
    chunked = http.post("/v1/completions", content=iter([b'{"prompt": "', b"y" * 70_000, b'"}']),
                        headers={"Content-Type": "application/json"})  # no Content-Length: counted as it arrives
    assert chunked.status_code == 413


# --- operations ------------------------------------------------------------------------------------------
def test_access_log_and_request_id(server, http):
    r = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3}, headers={"X-Request-Id": "req-test-42"})
    assert r.headers["x-request-id"] == "req-test-42"
    time.sleep(0.2)
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["request_id"] == "req-test-42"]
    assert len(mine) == 1 and mine[0]["status"] == 200 and mine[0]["path"] == "/v1/completions"
    assert mine[0]["completion_tokens"] == r.json()["usage"]["completion_tokens"] and mine[0]["ttft_s"] > 0


def test_metrics_after_traffic(server, http):
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "prompt_tokens_total") > 0 and metric(text, "generation_tokens_total") > 0
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds"):
        assert metric(text, f"{name}_count") > 0
    assert metric(text, "request_success_total", '{finished_reason="length"}') > 0


def test_50_streams_25_cancelled_then_nothing_stuck(server):
    async def run():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120,
                                    http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=100)))

        async def one(cancel: bool):
            stream = await client.chat.completions.create(
                model=server.model, messages=CHAT, temperature=0, stream=True, max_tokens=400 if cancel else 16,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            chunks = []
            async with stream:
                async for chunk in stream:
                    chunks.append(chunk)
                    if cancel and len(chunks) == 3:
                        break  # leaving `async with` closes the connection mid-stream
            return chunks

        results = await asyncio.gather(*(one(i % 2 == 0) for i in range(50)))
        await client.close()
        return results

    before = httpx.get(f"{server.url}/metrics").text
    results = asyncio.run(run())
    assert all(len(chunks) == 3 for chunks in results[::2])
    for chunks in results[1::2]:
        assert chunks[-1].usage.completion_tokens == 16
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    start = time.monotonic()
    reply = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0).chat.completions.create(
        model=server.model, messages=CHAT, max_tokens=4)
    assert reply.choices[0].finish_reason and time.monotonic() - start < 5
    text = wait_idle(server.url)
    assert [metric(text, name) for name in ("num_requests_running", "num_requests_waiting",
                                            "num_requests_admitted")] == [0, 0, 0]
    assert metric(text, "request_success_total", ABORT) - metric(before, "request_success_total", ABORT) == 25


def test_non_streaming_client_timeout_cancels_generation(server):
    before = metric(httpx.get(f"{server.url}/metrics").text, "request_success_total", ABORT)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=0.5,
                   json={"prompt": PROMPT, "max_tokens": 480, "ignore_eos": True})
    text = wait_idle(server.url)
    assert metric(text, "num_requests_admitted") == metric(text, "num_requests_running") == 0
    assert metric(text, "request_success_total", ABORT) - before == 1


# --- the small server: bounded queue, then graceful shutdown (stops it: keep these two last) ------------
def test_429_when_the_bounded_queue_is_full(servers, limits):
    small = servers.small
    capacity = limits["max_batch_size"]  # + --max-queue 0

    async def run():
        async with httpx.AsyncClient(base_url=small.url, timeout=60, limits=httpx.Limits(max_connections=64)) as c:
            body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
            requests = [c.build_request("POST", "/v1/completions", json=body) for _ in range(capacity + 2)]
            responses = await asyncio.gather(*(c.send(r, stream=True) for r in requests))
            statuses = [r.status_code for r in responses]
            rejected = [json.loads(await r.aread()) for r in responses if r.status_code == 429]
            retry = [r.headers.get("retry-after") for r in responses if r.status_code == 429]
            for r in responses:
                await r.aclose()
            return statuses, rejected, retry

    statuses, rejected, retry = asyncio.run(run())
    assert statuses.count(200) == capacity and statuses.count(429) == 2
    assert rejected[0]["error"]["code"] == "server_overloaded" and retry == ["1", "1"]
    assert metric(wait_idle(small.url), "num_requests_admitted") == 0  # the 32 closed streams were cancelled


def test_graceful_shutdown_finishes_short_and_cancels_long_requests(servers, limits):
    small = servers.small
    assert limits["max_batch_size"] >= 32 and limits["max_seq_len"] >= 490
    # In flight at SIGTERM: 31 x 480 tokens (480 batched steps: far more than the 5 s grace) and then 4
    # tokens (well within it). The first must end with an error event, the second normally.
    with httpx.Client(base_url=small.url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 480, "n": 31,
                                                       "ignore_eos": True, "stream": True}) as long:
            lines = long.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # running
            with c.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "stream": True,
                                                           "ignore_eos": True}) as short:
                assert short.status_code == long.status_code == 200
                start = time.monotonic()
                small.proc.send_signal(signal.SIGTERM)
                short_events = sse_lines(short.iter_lines())
            long_events = sse_lines(lines)
    # uvicorn re-raises the SIGTERM it caught once its shutdown is complete: that is a clean exit
    assert small.proc.wait(30) in (0, -signal.SIGTERM) and time.monotonic() - start < 5 + 10
    assert short_events[-1] == "[DONE]" and short_events[-2]["choices"][0]["finish_reason"] == "length"
    assert long_events[-1] == "[DONE]" and "shutting down" in long_events[-2]["error"]["message"]
