"""Property-based fuzzing of the server app (in-process, real fp16 engine of the embedded model).

Hypothesis builds request bodies from mostly-plausible fields mixed with junk (wrong types, NaN and
infinities, huge and negative numbers, lone surrogates, unknown keys, bad roles) and posts them through
Starlette's TestClient (httpx over ASGI). Whatever the body, the server must answer < 500 with either a
well-formed result or an error in OpenAI's shape, streams must end with [DONE] and never carry an error
event, and afterwards nothing may be left running. Derandomized: the same cases run every time.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import sse_data
from starlette.testclient import TestClient

from trtbuild.server import ServerSettings, create_app

MODEL = "fuzz"
CASES = {"chat": 250, "completions": 150, "echo_stream": 60, "raw": 100}
RUN = {"cases": 0, "statuses": {}}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(engine_dirs):
    from trtbuild.runtime import load_engine

    engine = load_engine(engine_dirs["fp16"])
    app = create_app(engine, ServerSettings(served_model_name=MODEL, max_queue=8))
    yield app
    engine.close()


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=True) as c:  # an unhandled exception fails the test
        yield c


junk = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=8), st.just("\ud800"), st.lists(st.integers(-3, 3), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
text = st.one_of(st.text(max_size=30), st.sampled_from(["[INST] hi [/INST]", "</s>", "日本語 🐱", "\ud83d", ""]))
token_ids = st.lists(st.integers(-2, 33000), min_size=0, max_size=6)

# Values inside the accepted ranges (edges included): these requests must succeed...
VALID = {
    "n": st.integers(1, 3),
    "temperature": st.one_of(st.floats(0, 2), st.sampled_from([0.0, 1e-300, 1e-40, 2.0])),
    "top_p": st.one_of(st.floats(1e-6, 1), st.just(1.0)),
    "top_k": st.integers(-1, 100),
    "seed": st.integers(-2**63, 2**63 - 1),
    "stop": st.one_of(st.text(min_size=1, max_size=4), st.lists(st.text(min_size=1, max_size=4), max_size=4)),
    "stop_token_ids": st.lists(st.integers(0, 32767), max_size=2),
    "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2),
    "repetition_penalty": st.one_of(st.floats(1e-3, 10), st.just(1e-300)),
    "min_tokens": st.integers(0, 1),
    "ignore_eos": st.booleans(),
    "include_stop_str_in_output": st.booleans(),
    "user": st.text(max_size=10),
    "logit_bias": st.dictionaries(st.integers(0, 32767).map(str), st.floats(-100, 100), max_size=3),
}
# ...and these anything from a bad value to junk: the server must answer 4xx, never 5xx.
INVALID = {
    "model": st.one_of(st.just("other-model"), junk),
    "n": st.one_of(st.integers(-1, 0), st.just(129), junk),
    "temperature": st.one_of(st.floats(-1, -1e-9), st.floats(2.0001, 1e300), st.sampled_from([math.inf, math.nan]), junk),
    "top_p": st.one_of(st.floats(-1, 0), st.floats(1.0001, 3), st.just(math.nan), junk),
    "top_k": st.one_of(st.integers(-2**40, -2), junk),
    "seed": st.one_of(st.integers(2**63, 2**70), junk),
    "stop": st.one_of(st.just(""), st.lists(st.text(min_size=1), min_size=17, max_size=17), junk),
    "stop_token_ids": st.one_of(st.lists(st.integers(32768, 2**40), min_size=1, max_size=2), junk),
    "frequency_penalty": st.one_of(st.floats(2.001, 1e9), st.floats(-1e9, -2.001), junk),
    "repetition_penalty": st.one_of(st.floats(-1, 0), st.floats(10.001, 1e9), junk),
    "min_tokens": st.one_of(st.integers(-5, -1), st.integers(100, 2**40), junk),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans(), "x": st.just(1)}), junk),
    "logit_bias": st.one_of(st.dictionaries(st.sampled_from(["-1", "32768", "x", "1.5", ""]), st.floats(-1, 1), min_size=1,
                                            max_size=2),
                            st.dictionaries(st.integers(0, 9).map(str), st.one_of(st.floats(100.001, 1e9), st.just(math.nan)),
                                            min_size=1, max_size=2), junk),
    "bogus_field": junk,
}
# max_tokens is always sent (a valid request without it may generate 500 tokens)
MAX_TOKENS = st.integers(1, 4)
BAD_MAX_TOKENS = st.one_of(st.integers(-1, 0), st.sampled_from([10**6, 2**63, 2.5]), junk.filter(lambda v: v is not None))

message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "user", "assistant", "system", "tool", "developer", "bogus"])},
    optional={"content": st.one_of(text, st.none(), st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"]), "text": text}), max_size=2), junk),
        "tool_call_id": st.sampled_from(["abcdefghi", "call_1"]), "name": text,
        "tool_calls": st.lists(st.fixed_dictionaries({"id": st.sampled_from(["abcdefghi", "call_x"]),
                                                      "type": st.just("function"),
                                                      "function": st.fixed_dictionaries({"name": st.just("f"), "arguments": st.just("{}")})}),
                               max_size=1)})
good_turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]),
                                             "content": st.text(min_size=1, max_size=40)}), min_size=1, max_size=3).map(
    lambda ms: ms + [{"role": "user", "content": "and now?"}] if ms[-1]["role"] != "user" else ms)
tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "get_weather"])}, optional={"description": text, "parameters": st.just({"type": "object"})})})
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}}, "required": ["a"]}
response_format = st.one_of(st.just({"type": "text"}), st.just({"type": "json_object"}),
                            st.just({"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}))
bad_response_format = st.one_of(st.just({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "nope"}}}),
                                st.just({"type": "json_schema", "json_schema": {"schema": SCHEMA}}),
                                st.fixed_dictionaries({"type": st.one_of(st.text(max_size=6), junk)}), junk)
tool_choice = st.one_of(st.sampled_from(["auto", "none", "required"]),
                        st.fixed_dictionaries({"type": st.just("function"),
                                               "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"])})}))


@st.composite
def bodies(draw, prompt_field: str, good_prompt, bad_prompt, extra_valid: dict, extra_invalid: dict):
    """A request body: valid fields only, or valid fields with one to three of them broken."""
    body = {prompt_field: draw(good_prompt), "model": MODEL, "max_tokens": draw(MAX_TOKENS)}
    valid = {**VALID, **extra_valid}
    for name in draw(st.lists(st.sampled_from(sorted(valid)), max_size=6, unique=True)):
        body[name] = draw(valid[name])
    if draw(st.booleans()):
        body["stream"] = True
        if draw(st.booleans()):
            body["stream_options"] = {"include_usage": draw(st.booleans())}
    if draw(st.booleans()):  # break it
        invalid = {**INVALID, **extra_invalid, prompt_field: bad_prompt, "max_tokens": BAD_MAX_TOKENS}
        for name in draw(st.lists(st.sampled_from(sorted(invalid)), min_size=1, max_size=3, unique=True)):
            body[name] = draw(invalid[name])
    return body


chat_body = bodies("messages", good_turns, st.one_of(st.lists(message, max_size=4), junk),
                   {"logprobs": st.just(True), "top_logprobs": st.integers(0, 20),
                    "max_completion_tokens": st.integers(1, 4), "tools": st.lists(tool, max_size=2),
                    "tool_choice": tool_choice, "response_format": response_format,
                    "parallel_tool_calls": st.booleans(), "nvext": st.just({"guided_json": SCHEMA}),
                    "guided_json": st.just(SCHEMA)},
                   {"top_logprobs": st.one_of(st.integers(21, 99), junk), "tool_choice": st.one_of(st.text(max_size=5), junk),
                    "response_format": bad_response_format, "tools": junk, "parallel_tool_calls": junk,
                    "nvext": st.one_of(st.just({"guided_json": {"type": "nope"}}), junk), "guided_json": junk})
completion_body = bodies("prompt", st.one_of(st.text(max_size=30), st.lists(st.integers(0, 32767), min_size=1, max_size=6),
                                             st.lists(st.text(max_size=10), min_size=1, max_size=2)),
                         st.one_of(st.just("\ud800"), st.just([]), st.lists(st.integers(32768, 2**40), min_size=1, max_size=2),
                                   st.lists(token_ids, max_size=2).filter(lambda v: any(not p for p in v) or not v), junk),
                         {"logprobs": st.integers(0, 20), "echo": st.booleans(), "best_of": st.integers(1, 4)},
                         {"logprobs": st.one_of(st.integers(21, 99), junk), "echo": junk, "best_of": st.one_of(
                             st.integers(-1, 0), st.just(129), junk), "suffix": st.just("x")})


def check(response, body, path: str = "/v1/completions") -> None:
    RUN["cases"] += 1
    RUN["statuses"][response.status_code] = RUN["statuses"].get(response.status_code, 0) + 1
    assert response.status_code < 500, (body, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
        assert set(error) == {"message", "type", "param", "code"}
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = sse_data(response.text)
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        chunks = events[:-1]
        assert all("error" not in c for c in chunks), chunks
        finished = [c["choices"][0]["index"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert sorted(finished) == sorted(set(finished))  # one finish_reason per choice
    elif path == "/tokenize":
        data = response.json()
        assert data["count"] == len(data["tokens"]) and all(isinstance(t, int) for t in data["tokens"])
    elif path == "/detokenize":
        assert isinstance(response.json()["prompt"], str)
    else:
        data = response.json()
        assert data["choices"] and data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + \
            data["usage"]["completion_tokens"]
        for choice in data["choices"]:
            assert choice["finish_reason"] in ("stop", "length", "tool_calls")
            if choice["finish_reason"] == "tool_calls":
                calls = choice["message"]["tool_calls"]
                assert calls and all(len(c["id"]) == 9 and json.loads(c["function"]["arguments"]) is not None
                                     for c in calls)
            fmt = body.get("response_format") if isinstance(body, dict) else None
            guided = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema") or \
                isinstance(body, dict) and ("guided_json" in body or "nvext" in body)
            if choice["finish_reason"] == "stop" and guided:
                json.loads(choice["message"]["content"])  # a finished structured answer always parses
            # never a partial character at the cut; a U+FFFD inside is the model's own invalid byte sequence
            # (unseeded sampling can produce one), which every server shows as such
            if choice["finish_reason"] == "length":
                assert not (choice.get("text") or choice.get("message", {}).get("content") or "").endswith("\ufffd")


def post(client, path: str, body) -> None:
    # json.dumps writes NaN/Infinity (as Python's json.loads and thus FastAPI accept) and escapes surrogates
    check(client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"}), body, path)


def fuzz(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def test_fuzz_chat_completions(client):
    @fuzz(CASES["chat"])
    @given(chat_body)
    def run(body):
        post(client, "/v1/chat/completions", body)

    run()


def test_fuzz_completions(client):
    @fuzz(CASES["completions"])
    @given(completion_body)
    def run(body):
        post(client, "/v1/completions", body)

    run()


@st.composite
def echo_stream_body(draw):
    """A completions body with echo and stream on (max_tokens 0 too: the prompt only), valid or broken."""
    body = draw(completion_body)
    if isinstance(body, dict):
        body.update(echo=True, stream=True)
        if draw(st.booleans()):
            body["max_tokens"] = 0
    return body


def test_fuzz_echo_with_stream(client):
    """echo + stream: no 5xx; a 200 stream sends every choice's prompt first (its chunk before any other of
    that index), one finish_reason per choice, [DONE] once."""
    ok = []

    @fuzz(CASES["echo_stream"])
    @given(echo_stream_body())
    def run(body):
        response = client.post("/v1/completions", content=json.dumps(body), headers={"Content-Type": "application/json"})
        check(response, body)
        if response.status_code == 200:
            chunks = [c for c in sse_data(response.text)[:-1] if c["choices"]]
            seen: dict[int, dict] = {}
            for chunk in chunks:
                choice = chunk["choices"][0]
                seen.setdefault(choice["index"], choice)
            assert sorted(seen) == list(range(len(seen))) and seen
            for first in seen.values():  # the prompt chunk: logprobs list the prompt, the first entry null
                if first["logprobs"] is not None:
                    assert first["logprobs"]["token_logprobs"][0] is None
            ok.append(body.get("max_tokens"))

    run()
    assert len(ok) >= 10 and 0 in ok  # enough valid echo streams ran, max_tokens 0 among them


def test_fuzz_raw_bodies_and_other_routes(client):
    @fuzz(CASES["raw"])
    @given(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"]),
           st.one_of(st.binary(max_size=40), junk.map(lambda v: json.dumps(v).encode()),
                     st.fixed_dictionaries({"max_tokens": st.just(3)}, optional={
                         "prompt": text, "messages": junk, "tokens": token_ids, "model": junk}).map(
                         lambda v: json.dumps(v).encode())))
    def run(path, payload):
        response = client.post(path, content=payload, headers={"Content-Type": "application/json"})
        check(response, payload, path)

    run()


def test_after_fuzzing_nothing_is_stuck_and_the_engine_is_alive(app, client):
    state = app.state.server
    deadline = time.monotonic() + 10
    while (state.admitted or state.engine.num_running or state.engine.num_waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (state.admitted, state.engine.num_running, state.engine.num_waiting) == (0, 0, 0)
    assert client.get("/health").status_code == 200
    ok = client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 2})
    assert ok.status_code == 200
    print(f"fuzz: {RUN['cases']} requests, statuses {dict(sorted(RUN['statuses'].items()))}")
