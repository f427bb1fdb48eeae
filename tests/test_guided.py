"""Guided decoding, tool-call parsing and the request plan, without an engine: the grammar mask on the
real v3 tokenizer, the TensorRT-LLM 1.2 mapping, tool_choice rules, logit_bias and best_of checks."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import jsonschema
import pytest
import torch

from trtbuild.runtime.guided import (LogitsMask, check_guide, lark_grammar, to_trtllm_guided_decoding,
                                     trtllm_guided_sampling)
from trtbuild.runtime.interface import SamplingParams
from trtbuild.server.errors import APIError
from trtbuild.server.plan import best_n, logit_bias
from trtbuild.server.protocol import ChatCompletionRequest
from trtbuild.server.structured import response_format_guide
from trtbuild.server.tools import ToolPlan, parse_calls

API = json.loads((Path(__file__).parent / "fixtures" / "trtllm_1_2_api.json").read_text())["sections"]
CAPITAL = {"type": "object", "additionalProperties": False, "required": ["city", "population", "tags"],
           "properties": {"city": {"type": "string", "maxLength": 12}, "population": {"type": "integer", "minimum": 0},
                          "tags": {"type": "array", "items": {"enum": ["big", "old", "wet"]}, "maxItems": 3}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def constrained_decode(tokenizer, guide, seed: int, steps: int = 120) -> tuple[list[int], str]:
    """Decode with random logits (a 'model' that knows nothing) through the mask: whatever the grammar
    allows is all that can come out."""
    mask = LogitsMask(tokenizer, guide=guide)
    generator = torch.Generator().manual_seed(seed)
    ids = []
    for _ in range(steps):
        row = mask.apply(torch.randn(tokenizer.vocab_size, generator=generator) * 4)
        token = int(torch.multinomial(torch.softmax(row, -1), 1, generator=generator))
        ids.append(token)
        if token == tokenizer.eos_id:
            break
        mask.advance(token)
    return ids, tokenizer.decode(ids)


@pytest.mark.parametrize("seed", range(4))
def test_random_logits_through_the_schema_mask_always_give_valid_json(tokenizer, seed):
    ids, text = constrained_decode(tokenizer, {"type": "json_schema", "schema": CAPITAL}, seed)
    assert ids[-1] == tokenizer.eos_id, text  # the grammar ends the value, then only EOS is allowed
    jsonschema.validate(json.loads(text), CAPITAL)


def test_json_object_mask_and_a_leading_space_piece(tokenizer):
    ids, text = constrained_decode(tokenizer, {"type": "json_object"}, seed=7)
    assert isinstance(json.loads(text), dict)
    mask = LogitsMask(tokenizer, guide={"type": "json_object"})
    allowed = torch.isfinite(mask.apply(torch.zeros(tokenizer.vocab_size)))
    # SentencePiece starts a reply with "▁{": the grammar must allow it, or the model is pushed off its path
    assert allowed[tokenizer.encode("{", bos=False)[0]] and allowed[tokenizer.encode("{", bos=False)[-1]]
    assert not allowed[tokenizer.encode("Hello", bos=False)[-1]] and not allowed[tokenizer.eos_id]


def test_tool_call_guide_allows_the_tool_calls_token_then_a_call(tokenizer):
    short = {"type": "function", "function": {"name": "get_weather", "parameters": {  # random logits: bound it
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"]}}}
    plan = ToolPlan(ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}],
                                                          "tools": [short]}).tools, "required", False)
    guide = plan.guide()
    mask = LogitsMask(tokenizer, guide=guide)
    assert torch.isfinite(mask.apply(torch.zeros(tokenizer.vocab_size)))[5]  # [TOOL_CALLS] may lead
    ids, text = constrained_decode(tokenizer, guide, seed=3, steps=200)
    parsed = plan.parse(ids, tokenizer)
    assert parsed is not None, text
    assert all(c["function"]["name"] == "get_weather" and "city" in json.loads(c["function"]["arguments"])
               for c in parsed[1])


def test_logit_bias_in_the_mask():
    mask = LogitsMask(None, logit_bias={"3": 100, 4: -100})
    row = mask.apply(torch.zeros(8))
    assert row[3] == 100 and row[4] == -100 and row.argmax() == 3


@pytest.mark.parametrize("schema, why", [({"type": "strin"}, "strin"), ({"$ref": "#/nope"}, "nope")])
def test_schemas_that_cannot_be_enforced_are_a_clear_400(schema, why):
    assert why in check_guide({"type": "json_schema", "schema": schema})
    with pytest.raises(APIError) as err:
        response_format_guide({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert err.value.status == 400 and why in err.value.message and err.value.param == "response_format"
    with pytest.raises(APIError):
        response_format_guide({"type": "xml"})
    assert response_format_guide({"type": "text"}) is None


def test_lark_grammar_bounds_whitespace_and_keeps_the_schema():
    grammar = lark_grammar({"type": "json_schema", "schema": CAPITAL})
    body = json.loads(grammar.split("%json ", 1)[1])
    assert body["x-guidance"]["whitespace_pattern"] == "[ ]?" and body["properties"] == CAPITAL["properties"]


def test_trtllm_guided_decoding_uses_the_1_2_names(monkeypatch):
    # GuidedDecodingParams(json, regex, grammar, json_object, structural_tag):
    # NVIDIA/TensorRT-LLM tensorrt_llm/sampling_params.py@a98a9061d72f6fd39f5d055ebdd2c6878a100e2c
    fields = {"json", "regex", "grammar", "json_object", "structural_tag"}
    assert to_trtllm_guided_decoding({"type": "json_object"}) == {"json_object": True}
    assert to_trtllm_guided_decoding({"type": "json_schema", "schema": CAPITAL}) == {"json": CAPITAL}
    assert set(to_trtllm_guided_decoding({"type": "tool_calls", "schema": {"type": "array"}})) <= fields
    made = {}
    module = types.ModuleType("tensorrt_llm.sampling_params")
    module.GuidedDecodingParams = lambda **kw: made.setdefault("guide", kw)
    monkeypatch.setitem(sys.modules, "tensorrt_llm", types.ModuleType("tensorrt_llm"))
    monkeypatch.setitem(sys.modules, "tensorrt_llm.sampling_params", module)
    extra = trtllm_guided_sampling(SamplingParams(guided={"type": "json_object"}, logit_bias={"7": -5}), 16)
    assert set(extra) <= set(API["SamplingParams"]["fields"])  # guided_decoding, embedding_bias
    assert made["guide"] == {"json_object": True} and extra["embedding_bias"][7] == -5
    assert extra["embedding_bias"].dtype == torch.float32 and extra["embedding_bias"].shape == (16,)
    assert trtllm_guided_sampling(SamplingParams(), 16) == {}


def test_parse_calls_accepts_mistral_output_and_rejects_the_rest():
    calls = parse_calls(' [{"name": "get_weather", "arguments": {"city": "Paris"}}]')
    assert len(calls) == 1 and calls[0]["type"] == "function"
    assert calls[0]["id"].isalnum() and len(calls[0]["id"]) == 9  # the id form Mistral v3 accepts back
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    for bad in ('[{"name": "get_weather", "arguments": {"city": "Pa', "[]", '[{"arguments": {}}]', "Paris",
                '[{"name": "f", "arguments": 3}]'):
        assert parse_calls(bad) is None, bad


def test_tool_choice_rules(tokenizer):
    tools = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}],
                                                  "tools": [WEATHER]}).tools
    named = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
                                                  "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    with pytest.raises(APIError, match="nope"):
        ToolPlan(named.tools, named.tool_choice)
    with pytest.raises(APIError, match="requires tools"):
        ToolPlan(None, "required")
    none = ToolPlan(tools, "none")
    assert none.logit_bias() == {5: -100.0} and not none.active and none.guide() is None
    auto = ToolPlan(tools, None)
    assert auto.active and auto.guide() is None
    text = tokenizer.encode("Paris is nice.", bos=False)
    assert auto.parse(text + [tokenizer.eos_id], tokenizer) is None  # plain text stays text
    call = [5] + tokenizer.encode('[{"name": "get_weather", "arguments": {"city": "Rome"}}]', bos=False)
    content, calls = auto.parse(text + call + [tokenizer.eos_id], tokenizer)
    assert content == "Paris is nice." and calls[0]["function"]["name"] == "get_weather"
    assert auto.parse(call[:-3], tokenizer) is None  # truncated JSON: returned as text, not an error
    single = ToolPlan(tools, "required", parallel_tool_calls=False).guide()
    assert single["schema"]["maxItems"] == 1 and single["schema"]["minItems"] == 1


def test_logit_bias_and_best_of_checks():
    assert logit_bias({"5": -100, "32767": 100.0}, 32768) == {5: -100.0, 32767: 100.0}
    for bad in ({"32768": 1}, {"-1": 1}, {"x": 1}, {"5": 101}, {"5": float("nan")}):
        with pytest.raises(APIError) as err:
            logit_bias(bad, 32768)
        assert err.value.param == "logit_bias"

    def result(lps):
        from trtbuild.runtime.interface import GenerationResult
        return GenerationResult("r", [1], [2] * len(lps), "t", "stop", logprobs=lps)

    picked = best_n([result([-1.0, -1.0]), result([-0.1]), result([-5.0]), result([-0.5])], per_prompt=4, n=2)
    assert [sum(r.logprobs) for r in picked] == [-0.1, -0.5]


def test_the_sampler_applies_bias_and_grammar_on_the_greedy_path_too(tokenizer):
    from trtbuild.runtime.guided import grammar_processors
    from trtbuild.runtime.sampling import Sampler

    vocab = 32768
    sampler = Sampler(vocab, tokenizer.eos_id, capacity=3)
    biased = sampler.start(SamplingParams(temperature=0, logit_bias={"7": 100}, logprobs=True), [1], row=0)
    guide = SamplingParams(temperature=0, guided={"type": "json_object"})
    guided = sampler.start(guide, [1], row=1)
    guided.processors += grammar_processors(guide, tokenizer)
    plain = sampler.start(SamplingParams(temperature=0), [1], row=2)
    assert grammar_processors(plain.params, tokenizer) == []  # the batched fast path stays fast
    logits = torch.zeros(3, vocab)
    logits[:, 3] = 5.0  # [INST]: what an unconstrained greedy row picks
    (b, lp, _), (g, _, _), (u, _, _) = sampler.sample(logits.clone(), [biased, guided, plain])
    assert (b, u) == (7, 3)
    assert lp == pytest.approx(float(torch.log_softmax(logits[0], -1)[7]))  # logprobs of the raw model
    # The grammar allows only the start of a JSON object: "{", after at most one leading space ("▁", or the
    # byte piece <0x20>); all are tied at 0 here, so greedy takes one of them, never [INST].
    piece = tokenizer.id_to_piece(g).replace("▁", " ").replace("<0x20>", " ")
    assert g != 3 and piece.strip() in ("", "{"), tokenizer.id_to_piece(g)


def test_guided_json_and_nim_nvext_are_json_schema_guides():
    from trtbuild.server.plan import RequestPlan

    def plan(**body):
        return RequestPlan(ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}],
                                                                 **body}), 32768)

    assert plan(nvext={"guided_json": CAPITAL}).guide == {"type": "json_schema", "schema": CAPITAL}
    assert plan(guided_json=json.dumps(CAPITAL)).guide == {"type": "json_schema", "schema": CAPITAL}
    for body, param in ((dict(guided_json="not json"), "guided_json"), (dict(nvext={"guided_json": {"type": "x"}}), "nvext"),
                        (dict(guided_json=CAPITAL, response_format={"type": "json_object"}), "guided_json")):
        with pytest.raises(APIError) as err:
            plan(**body)
        assert err.value.status == 400 and err.value.param == param
