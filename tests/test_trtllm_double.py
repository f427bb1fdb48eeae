"""The tensorrt-llm backend end to end on the contract test double of TensorRT-LLM 1.2 (tests/trtllm_double,
NOT TensorRT-LLM): build, runtime, validate, serve and bench, through trtbuild's real code paths.

Issue 11, item by item: 1 scoring and the gate (test_validate_*), 2 effective settings read back
(test_build_*), 3 offline calibration (test_fp8_build_calibrates_offline, test_calibration_*), 4 aborts and
close (test_runtime_*), 5 TensorRT-LLM's workspace and the build-only KV cache (test_build_uses_*),
6 the 1.2 API fixture (tests/test_trtllm_api_fixture.py).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import one_thread, trtbuild  # noqa: F401  (one_thread: autouse fixture)
from trtllm_fixtures import DOUBLE_GPU, double_engines, double_module, double_settings, double_ws  # noqa: F401

from trtbuild.errors import TrtbuildError
from trtbuild.manifest import artifact_hashes, load_manifest
from trtbuild.runtime import SamplingParams, load_engine
from trtbuild.trtllm_config import build_config, quant_config
from trtbuild.trtllm_effective import engine_can_score, predicted_effective

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def fp16(double_engines):
    return double_engines["fp16"].engine_dir


@pytest.fixture(scope="module")
def small_prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text(json.dumps({"messages": CHAT, "name": "capital"}) + "\n"
                    + json.dumps({"prompt": "The weather today is", "max_tokens": 8}) + "\n")
    return path


def events(kind: str) -> list:
    from tensorrt_llm.executor import EVENTS

    return [detail for k, detail in EVENTS if k == kind]


# --- build: item 2 (effective settings) and item 5 (workspace, build-only executor) ----------------------

def test_build_records_effective_settings_as_predicted(double_engines):
    for variant, result in double_engines.items():
        trt = result.manifest.trtllm
        settings = double_settings(variant)
        predicted = predicted_effective(build_config(settings), quant_config(settings))
        effective = trt["effective"]
        assert effective["version"] == "1.2.0" and result.manifest.gpu == DOUBLE_GPU
        for section in ("build_config", "plugin_config", "quantization"):
            for name, value in predicted[section].items():
                assert effective[section][name] == value, (variant, section, name)
        assert effective["build_config"]["gather_context_logits"] is True  # every engine can be scored
        assert engine_can_score(result.engine_dir) == (True, "built with gather_context_logits")
        assert sorted(p.name for p in (result.engine_dir / "engine").glob("rank*.engine")) == ["rank0.engine"]


def test_build_shows_the_setting_tensorrt_llm_changed(double_engines):
    """The fp8 variant asks for FP8 context FMHA (as the h100 profile once did) with an fp16 KV cache:
    builder.py build() turns it off; the manifest records it and the user is told."""
    fp8, fp16 = double_engines["fp8"], double_engines["fp16"]
    change = {"setting": "plugin_config.use_fp8_context_fmha", "requested": True, "effective": False}
    assert fp8.manifest.trtllm["changed"] == [change]
    assert fp8.manifest.trtllm["effective"]["plugin_config"]["use_fp8_context_fmha"] is False
    assert any("use_fp8_context_fmha: requested True, built False" in w for w in fp8.warnings)
    assert fp16.manifest.trtllm["changed"] == [] and fp8.manifest.trtllm["quant_config"] == {
        "quant_algo": "FP8", "kv_cache_quant_algo": None}  # no exclude_modules: the LLM API drops it
    assert fp8.manifest.trtllm["effective"]["quantization"]["exclude_modules"] == ["lm_head"]


def test_build_uses_trtbuild_workspace_and_a_small_kv_cache(double_engines, double_ws):
    for result in double_engines.values():
        log = (double_ws.tmp_dir / f"{result.engine_dir.name}.build.log").read_text()
        workspace = next(line.split(" ", 2)[2] for line in log.splitlines() if "] workspace " in line)
        work_dir = double_ws.tmp_dir / f"{result.engine_dir.name}.trtllm"
        assert Path(workspace).is_relative_to(work_dir / "llm-workspace"), workspace  # not $TMPDIR
        assert not work_dir.exists()  # removed after the build
        kv = json.loads(next(line for line in log.splitlines() if "KvCacheConfig" in line).split("KvCacheConfig ")[1])
        assert kv["free_gpu_memory_fraction"] == 0.05 and kv["max_tokens"] == 512  # one max_seq_len sequence
        assert result.manifest.trtllm["llm_args"]["workspace"].endswith(".trtllm/llm-workspace")


# --- calibration: item 3 ---------------------------------------------------------------------------------

def test_fp8_build_calibrates_offline_on_the_bundled_corpus(double_engines, double_ws):
    from trtbuild.data import corpus_samples

    fp8 = double_engines["fp8"]
    log = (double_ws.tmp_dir / f"{fp8.engine_dir.name}.build.log").read_text()
    assert "calibrated on 64 samples of " in log and "calibration-dataset" in log  # num_samples = 64 of cpu-tiny
    record = fp8.manifest.calibration["dataset"]
    assert record == {"source": "builtin", "kind": "bundled", "samples": len(corpus_samples()),
                      "format": "train.jsonl (text)"}


def test_calibration_problems_fail_before_anything_loads(double_module, double_ws, tiny_model, monkeypatch):
    import dataclasses

    from trtbuild.compile import compile_engine
    from trtbuild.config import CalibrationSettings

    base = double_settings("fp8")
    for dataset, message in [("wikitext", "TensorRT-LLM cannot calibrate on 'wikitext'"),
                             ("cnn_dailymail", "is downloaded from the hub but HF_HUB_OFFLINE is set"),
                             ("./missing.jsonl", "calibration data ./missing.jsonl not found")]:
        settings = dataclasses.replace(base, calibration=CalibrationSettings(dataset=dataset, num_samples=8))
        started = time.monotonic()
        with pytest.raises(TrtbuildError, match=message) as info:
            compile_engine(double_ws, settings, tiny_model, backend="tensorrt-llm", progress=False)
        assert "\n" not in str(info.value)
        assert time.monotonic() - started < 10  # no child process, no model load (each one takes seconds)
    assert not list(double_ws.tmp_dir.glob("*.trtllm"))  # nothing half-written left behind


# --- runtime: item 4 (abort only unfinished requests, close waits) ---------------------------------------

def test_runtime_streams_and_never_aborts_finished_requests(double_module, fp16, tokenizer):
    prompt = tokenizer.encode_chat(CHAT)
    with load_engine(fp16) as engine:
        assert engine.info.backend == "tensorrt-llm" and engine.info.can_score
        results = engine.generate([prompt] * 3, SamplingParams(max_tokens=4, temperature=0))
        assert [r.finish_reason for r in results] == ["length"] * 3 and len({tuple(r.token_ids) for r in results}) == 1
        eos = engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0)).result(30)
        assert eos.finish_reason == "stop" and eos.text == "Paris is the capital of France."
        stop_token = engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0,
                                                          stop_token_ids=[eos.token_ids[1]])).result(30)
        assert stop_token.token_ids == eos.token_ids[:2] and stop_token.stop_reason == eos.token_ids[1]
        stopped = engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0, stop=["capital"])).result(30)
        assert stopped.text == "Paris is the " and stopped.finish_reason == "stop"
        deadline = time.monotonic() + 10
        while engine.num_running and time.monotonic() < deadline:
            time.sleep(0.01)
    assert events("abort_finished") == []  # no "Request of client_id N is finished, cannot abort it."
    assert len(events("abort")) == 1  # the stop string: TensorRT-LLM was still generating
    assert len(events("shutdown")) == 1


def test_runtime_close_waits_for_aborts_before_shutdown(double_module, fp16, tokenizer):
    from tensorrt_llm.executor import EVENTS

    engine = load_engine(fp16)
    streams = [engine.submit(tokenizer.encode("Once upon a time"), SamplingParams(max_tokens=300, temperature=0,
                                                                                 ignore_eos=True))
               for _ in range(3)]
    for event in streams[0]:  # all three are generating
        if event.index == 2:
            break
    EVENTS.clear()
    engine.close()
    assert [s.result(1).finish_reason for s in streams] == ["abort"] * 3
    kinds = [k for k, _ in EVENTS]
    assert kinds == ["abort", "abort", "abort", "shutdown"], kinds  # every abort reached a live executor first


def test_runtime_cancel_aborts_the_tensorrt_llm_request(double_module, fp16, tokenizer):
    from tensorrt_llm.executor import EVENTS

    with load_engine(fp16) as engine:
        EVENTS.clear()
        stream = engine.submit(tokenizer.encode("Once upon a time"),
                               SamplingParams(max_tokens=300, temperature=0, ignore_eos=True))
        for event in stream:
            if event.index == 2:
                break
        stream.cancel()
        result = stream.result(10)
        assert result.finish_reason == "abort" and len(result.token_ids) < 300
        deadline = time.monotonic() + 10
        while not events("abort") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(events("abort")) == 1
        with pytest.raises(ValueError, match="gather_generation_logits = true"):
            engine.submit([1, 5], SamplingParams(logprobs=True))
    assert events("abort_finished") == []


def test_runtime_request_checks_mirror_tensorrt_llm(double_module, fp16, tokenizer):
    """prompt + max_tokens <= max_seq_len (llm.py _check_arguments): the adapter clamps max_tokens."""
    from tensorrt_llm import SamplingParams as TrtSamplingParams

    with load_engine(fp16) as engine:
        long_prompt = tokenizer.encode(" ".join(["word"] * 2000))[:505]
        result = engine.submit(long_prompt, SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)).result(30)
        assert result.finish_reason == "length" and len(result.token_ids) == 512 - 505
        with pytest.raises(ValueError, match=r"should not exceed max_seq_len \(512\)"):
            engine.llm.generate_async({"prompt_token_ids": long_prompt}, TrtSamplingParams(max_tokens=8, end_id=2))
        with pytest.raises(ValueError, match="logprobs.*requires `gather_generation_logits=True`"):
            engine.llm.generate_async({"prompt_token_ids": [1, 5]}, TrtSamplingParams(logprobs=1, end_id=2))


# --- validate: item 1 -------------------------------------------------------------------------------------

def test_validate_scores_a_tensorrt_llm_engine(double_module, double_ws, fp16, small_prompts):
    from trtbuild.validation import validate_engine

    result = validate_engine(double_ws, fp16, prompts=small_prompts, max_tokens=12, progress=False)
    m = result.metrics
    assert result.available["teacher_forced"] and m.teacher_forced_positions > 0
    # fp16-rounded weights against the float32 reference: every metric present and within the fp16 gate
    assert m.top1 == 1.0 and m.mean_kl < 1e-3 and m.mean_logprob_diff < 1e-2
    assert result.verdict == "pass" and not [c for c in result.checks if c.status == "unmeasured"]


def test_validate_scores_match_the_reference_row_by_row(double_module, fp16, tiny_model, tokenizer):
    from trtbuild.runtime import load_reference

    prompt = tokenizer.encode_chat(CHAT)
    continuation = tokenizer.encode(" Paris is the capital of France.", bos=False)
    ref = load_reference(tiny_model.path)
    with load_engine(fp16) as engine:
        scores = engine.score(prompt, continuation)
    expected = ref.score(prompt, continuation)
    ref.close()
    assert scores.shape == expected.shape == (len(continuation), 32768)
    # same rows (position alignment): fp16 weight rounding moves log-probabilities by far less than 0.05
    assert np.abs(scores - expected).max() < 0.05


def damaged_copy(engine_dir: Path, dest: Path) -> Path:
    """The engine with one MLP's weights scaled by 1.5, as a miscompiled engine would be; its manifest
    re-hashed so that only the numbers are wrong."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(engine_dir, dest)
    weights = load_file(str(dest / "engine" / "rank0.engine"))
    name = "model.layers.1.mlp.down_proj.weight"
    weights[name] = (weights[name].astype(np.float32) * 1.5).astype(np.float16)
    save_file(weights, str(dest / "engine" / "rank0.engine"))
    manifest = load_manifest(dest)
    manifest.artifacts = artifact_hashes(dest)
    manifest.save(dest)
    return dest


def test_validate_fails_a_damaged_engine(double_module, double_ws, fp16, small_prompts, tmp_path, capsys):
    damaged = damaged_copy(fp16, tmp_path / "fp16-damaged")
    code, out, err = trtbuild(capsys, double_ws, "validate", str(damaged), "--prompts", str(small_prompts),
                              "--max-tokens", "12", "--json")
    data = json.loads(out)
    assert code == 3 and data["verdict"] == "fail", err
    failed = {c["threshold"] for c in data["checks"] if c["status"] == "fail"}
    assert {"max_mean_kl", "max_mean_logprob_diff"} <= failed  # the teacher-forced metrics catch it


def test_validate_unscoreable_engine_is_not_validated(double_module, double_ws, fp16, small_prompts, tmp_path,
                                                      capsys):
    """An engine built without gather_context_logits (e.g. by an older trtbuild): exit 5, never "pass",
    unless --allow-unscored."""
    old = tmp_path / "fp16-no-context-logits"
    shutil.copytree(fp16, old)
    config = json.loads((old / "engine" / "config.json").read_text())
    config["build_config"]["gather_context_logits"] = False
    (old / "engine" / "config.json").write_text(json.dumps(config))
    manifest = load_manifest(old)
    manifest.artifacts = artifact_hashes(old)
    manifest.save(old)
    assert engine_can_score(old)[0] is False  # what `trtbuild doctor` can ask without loading anything
    args = ["validate", str(old), "--prompts", str(small_prompts), "--max-tokens", "12"]
    code, out, err = trtbuild(capsys, double_ws, *args)
    assert code == 5 and "verdict: NOT VALIDATED" in out
    assert "is not validated: teacher-forced top-1 agreement: could not be computed" in err
    (error,) = [line for line in err.splitlines() if line.startswith("error: ")]  # one line
    assert "gather_context_logits" in error and "--allow-unscored" in error
    code, out, err = trtbuild(capsys, double_ws, *args, "--allow-unscored", "--json")
    data = json.loads(out)
    assert code == 0 and data["verdict"] == "pass" and data["allow_unscored"] is True
    assert {c["status"] for c in data["checks"] if c["threshold"] == "min_top1"} == {"unmeasured"}


# --- serve and bench --------------------------------------------------------------------------------------

# --- guided decoding (issue 14): structured output and forced tool calls on the TensorRT-LLM runtime ---------
CAPITAL = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
           "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}
ASK_JSON = [{"role": "user", "content": "What is the capital of Japan? Answer in JSON."}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_build_writes_the_hf_tokenizer_xgrammar_reads(double_engines, tokenizer):
    """The embedded model ships only a SentencePiece file; TensorRT-LLM's _xgrammar_tokenizer_info needs a
    PreTrainedTokenizerFast (tokenizer.py@89fd9b74): trtbuild.hf_tokenizer converts one into the engine dir,
    with the SentencePiece ids, hashed in the manifest like every engine file."""
    from tensorrt_llm.llmapi.tokenizer import _xgrammar_tokenizer_info, tokenizer_factory

    for result in double_engines.values():
        assert {"engine/tokenizer.json", "engine/tokenizer_config.json"} <= set(result.manifest.artifacts)
        info = _xgrammar_tokenizer_info(tokenizer_factory(str(result.engine_dir / "engine")))
        assert info["stop_token_ids"] == [tokenizer.eos_id] and len(info["encoded_vocab"]) == tokenizer.vocab_size
        assert all(info["encoded_vocab"][i] == tokenizer.id_to_piece(i) for i in (0, 1, 3, 5, 300, 23325, 32767))


def json_object_matcher(engine_dir: Path, token_ids: list):
    """llguidance's matcher for {"type": "object"} over the engine's own tokenizer.json, fed `token_ids`."""
    import llguidance
    import llguidance.hf
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(engine_dir / "engine" / "tokenizer.json"))
    grammar = llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}',
                                                            defaults={"whitespace_pattern": "[ ]?"})
    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(hf, eos_token=2), grammar)
    matcher.consume_tokens(list(token_ids))
    return matcher


def test_runtime_guided_requests_follow_the_guide_without_tensorrt_llm_decoding(double_module, fp16, tokenizer):
    """The LLM is created with the engine dir's tokenizer and guided_decoding_backend='xgrammar'
    (llm_kwargs); guides become GuidedDecodingParams (runtime.guided), logit_bias embedding_bias; and
    TensorRT-LLM decodes nothing (detokenize=False): no per-token cost from loading its tokenizer."""
    import jsonschema
    from tensorrt_llm.executor import EVENTS

    from trtbuild.server.tools import parse_calls

    EVENTS.clear()
    calls = {"type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object", "additionalProperties": False, "required": ["name", "arguments"],
        "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER["function"]["parameters"]}}}
    with load_engine(fp16) as engine:
        args = engine.llm.args
        assert (args["skip_tokenizer_init"], args["guided_decoding_backend"]) == (False, "xgrammar")
        assert args["tokenizer"] == str(fp16 / "engine") and len(events("guided_decoding_config")) == 1
        schema = engine.submit(tokenizer.encode_chat(ASK_JSON), SamplingParams(
            max_tokens=80, temperature=0, guided={"type": "json_schema", "schema": CAPITAL})).result(60)
        assert schema.finish_reason == "stop", schema.text
        jsonschema.validate(json.loads(schema.text), CAPITAL)
        obj = engine.submit(tokenizer.encode_chat(ASK_JSON), SamplingParams(
            max_tokens=80, temperature=0, guided={"type": "json_object"})).result(60)
        # json_object bounds no length: whether this model closes its object within 80 tokens depends on
        # the training (weights differ from CPU to CPU). What the guide promises holds for any weights: every
        # token was allowed by the grammar, and a finished answer is one JSON object.
        assert not json_object_matcher(fp16, obj.token_ids).is_error(), obj.text
        assert obj.finish_reason in ("stop", "length")
        if obj.finish_reason == "stop":
            assert isinstance(json.loads(obj.text), dict), obj.text
        forced = engine.submit(tokenizer.encode_chat(ASK_WEATHER, [WEATHER]), SamplingParams(
            max_tokens=80, temperature=0, guided={"type": "tool_calls", "schema": calls})).result(60)
        (call,) = parse_calls(forced.text)  # a bare calls array: what a forced tool_choice parses
        assert call["function"]["name"] == "get_weather"
        assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
        dog = tokenizer.encode("dog", bos=False)[-1]
        biased = engine.submit(tokenizer.encode("Once upon a time"), SamplingParams(
            max_tokens=3, temperature=0, logit_bias={dog: 100.0})).result(60)
        assert biased.token_ids == [dog] * 3
    assert len(events("guided")) == 3 and events("detokenize") == []


def test_runtime_without_hf_tokenizer_refuses_guided_requests(double_module, fp16, monkeypatch):
    """An engine dir without tokenizer.json (built before trtbuild wrote one): skip_tokenizer_init as before,
    a one-line ValueError (the server's 400) for guided requests, plain ones unaffected. And what it avoids:
    TensorRT-LLM's xgrammar without a tokenizer, or another backend, fails at load."""
    from tensorrt_llm._tensorrt_engine import LLM

    monkeypatch.setattr("trtbuild.runtime.trtllm_runtime.has_hf_tokenizer", lambda directory: False)
    with load_engine(fp16) as engine:
        assert engine.llm.args["skip_tokenizer_init"] is True and "guided_decoding_backend" not in engine.llm.args
        with pytest.raises(ValueError, match="tokenizer.json") as err:
            engine.submit([1, 5], SamplingParams(max_tokens=2, guided={"type": "json_object"}))
        assert "\n" not in str(err.value) and fp16.name in str(err.value)
        assert engine.submit([1, 5], SamplingParams(max_tokens=2, temperature=0)).result(30).finish_reason == "length"
    with pytest.raises(AttributeError):  # _xgrammar_tokenizer_info(None): skip_tokenizer_init left no tokenizer
        LLM(model=str(fp16 / "engine"), skip_tokenizer_init=True, guided_decoding_backend="xgrammar")
    with pytest.raises(ValueError, match="Unsupported guided decoding backend llguidance"):
        LLM(model=str(fp16 / "engine"), tokenizer=str(fp16 / "engine"), guided_decoding_backend="llguidance")


def test_serve_and_bench_run_on_the_engine(double_module, double_ws, fp16):
    import openai
    import uvicorn

    from trtbuild.bench import LoadSpec, WorkloadSpec, run_offline_bench
    from trtbuild.server import create_app

    result = run_offline_bench(double_ws, fp16, WorkloadSpec(input_len=16, output_len=8, num_requests=6, warmup=1),
                               LoadSpec(concurrency=3), progress=False)
    assert result.summary.target["backend"] == "tensorrt-llm" and result.summary.counts["succeeded"] == 6
    assert result.summary.token_counts and result.path.is_dir()

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: load_engine(fp16)), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        wait_ready(port)
        chunks = list(client.chat.completions.create(model=fp16.name, messages=CHAT, stream=True, temperature=0,
                                                     max_tokens=20))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Paris is the capital of France."
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        # structured output and a forced tool call, through TensorRT-LLM's guided decoding (issue 14)
        reply = client.chat.completions.create(
            model=fp16.name, messages=ASK_JSON, temperature=0, max_tokens=80,
            response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL}}).choices[0]
        assert reply.finish_reason == "stop" and set(json.loads(reply.message.content)) == {"city", "country"}
        forced = client.chat.completions.create(
            model=fp16.name, messages=ASK_WEATHER, temperature=0, max_tokens=80, tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}}).choices[0]
        assert forced.finish_reason == "tool_calls" and forced.message.tool_calls[0].function.name == "get_weather"
        # echo + stream: the prompt chunk first; its logprobs scored through the engine's context logits
        echo = dict(model=fp16.name, prompt="The weather today is", echo=True, stream=True, temperature=0)
        (only,) = list(client.completions.create(logprobs=1, max_tokens=0, **echo))
        assert only.choices[0].text == "The weather today is" and only.choices[0].finish_reason == "length"
        lps = only.choices[0].logprobs.token_logprobs
        assert len(lps) == 5 and lps[0] is None and all(lp < 0 for lp in lps[1:])
        echoed = [c.choices[0].text for c in client.completions.create(max_tokens=3, **echo)]
        assert echoed[0] == "The weather today is" and len(echoed) > 1
        with pytest.raises(openai.BadRequestError, match="gather_generation_logits"):  # generated tokens' logprobs
            client.completions.create(logprobs=1, max_tokens=3, **echo)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert events("abort_finished") == []


def free_port() -> int:
    """A free port in this helper's range (18100-18199), else any free port."""
    import socket

    for port in [*range(18100, 18200), 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free port")


def wait_ready(port: int, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")
