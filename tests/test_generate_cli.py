"""`trtbuild generate` as a person uses it: text then a stat line, --stream, --json, one-line errors."""

from __future__ import annotations

import json
import re

import pytest

from helpers import trtbuild


STAT_LINE = re.compile(r"^\[(\d+) tokens in [\d.]+ s: [\d.]+ tok/s, TTFT \d+ ms, (\d+) prompt tokens, finish (\w+); "
                       r".*torch backend")


@pytest.mark.parametrize("stream", [False, True])
def test_chat_prompt_prints_the_reply_then_stats(capsys, workspace, engine_dirs, tokenizer, stream):
    question = "What is the capital of France?"
    args = ["generate", str(engine_dirs["fp16"]), "--chat", "--prompt", question, "--max-tokens", "12"]
    code, out, err = trtbuild(capsys, workspace, *args, *(["--stream"] if stream else []))
    assert code == 0, err
    *text_lines, stats = out.rstrip("\n").split("\n")
    match = STAT_LINE.match(stats)
    assert match, stats
    prompt_ids = tokenizer.encode_chat([{"role": "user", "content": question}])
    assert int(match.group(2)) == len(prompt_ids) and 1 <= int(match.group(1)) <= 12
    with_json = trtbuild(capsys, workspace, *args, "--json")[1]
    assert "\n".join(text_lines) == json.loads(with_json)["text"]  # streamed or not: the same greedy text


def test_json_is_the_generation_result(capsys, workspace, engine_dirs, tokenizer):
    code, out, err = trtbuild(capsys, workspace, "generate", "fp8", "-p", "Once upon a time", "--max-tokens", "5",
                              "--temperature", "0.8", "--seed", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["prompt_token_ids"] == tokenizer.encode("Once upon a time")
    assert 1 <= len(result["token_ids"]) <= 5
    assert (result["finish_reason"] == "length") == (len(result["token_ids"]) == 5)
    assert "Once upon a time" + result["text"] == tokenizer.decode(result["prompt_token_ids"] + result["token_ids"])
    again = json.loads(trtbuild(capsys, workspace, "generate", "fp8", "-p", "Once upon a time", "--max-tokens", "5",
                                "--temperature", "0.8", "--seed", "3", "--json")[1])
    assert again["token_ids"] == result["token_ids"]  # seeded: the same tokens


def test_stop_string_cuts_the_output(capsys, workspace, engine_dirs):
    args = ["generate", str(engine_dirs["fp16"]), "--chat", "-p", "What is the capital of France?",
            "--max-tokens", "12", "--json"]
    full = json.loads(trtbuild(capsys, workspace, *args)[1])["text"]
    word = full.split()[1]
    stopped = json.loads(trtbuild(capsys, workspace, *args, "--stop", word, "--stop", "zzzz")[1])
    assert stopped["finish_reason"] == "stop" and stopped["stop_reason"] == word
    assert stopped["text"] == full[:full.index(word)]


@pytest.mark.parametrize("args, message", [
    (["--top-p", "0"], "error: bad option: top_p must be in (0, 1], got 0.0"),
    (["--temperature", "5"], "error: bad option: temperature must be in [0, 2], got 5.0"),
    (["--prompt", "word " * 500], "error: This model's maximum context length is 512 tokens"),
])
def test_bad_input_is_one_line(capsys, workspace, engine_dirs, args, message):
    code, out, err = trtbuild(capsys, workspace, "generate", str(engine_dirs["fp16"]), "--prompt", "hi", *args)
    assert code == 1 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_unknown_engine_is_one_line(capsys, workspace):
    code, _, err = trtbuild(capsys, workspace, "generate", "no-such-engine", "-p", "hi")
    assert code == 1 and err.startswith("error: no engine 'no-such-engine'") and err.count("\n") == 1
