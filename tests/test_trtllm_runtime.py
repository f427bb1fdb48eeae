"""The TensorRT-LLM runtime without TensorRT-LLM: what we hand it (checked against the 1.2 names), the
clear error where it is missing, and the streaming adapter driven by a test double of the 1.2 LLM API.

The double (FakeLLM) is only here to run TrtllmEngine's own logic (token diffs, logprobs, stop strings
and cancellation turned into abort(), finish reasons); it accepts only the 1.2 field names.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from pathlib import Path

import pytest

from trtbuild.errors import TrtbuildError
from trtbuild.manifest import Manifest
from trtbuild.runtime import SamplingParams, load_engine
from trtbuild.runtime.trtllm_runtime import llm_kwargs, to_trtllm_sampling_params, token_logprob

API = json.loads((Path(__file__).parent / "fixtures" / "trtllm_1_2_api.json").read_text())["sections"]
EOS = 2


def fields(section: str) -> set[str]:
    return set(API[section]["fields"])


@pytest.mark.parametrize("params", [
    SamplingParams(),
    SamplingParams(max_tokens=300, temperature=0, stop=["\n\n"], stop_token_ids=[7, 9], min_tokens=3),
    SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=5, frequency_penalty=0.5, presence_penalty=-0.5,
                   repetition_penalty=1.1, logprobs=True, top_logprobs=3, ignore_eos=True),
])
def test_sampling_params_use_only_1_2_names(params):
    mapped = to_trtllm_sampling_params(params, EOS)
    assert set(mapped) <= fields("SamplingParams")
    assert mapped["max_tokens"] == params.max_tokens  # always set: TensorRT-LLM's default is 32
    assert (mapped["end_id"], mapped["pad_id"], mapped["detokenize"]) == (EOS, EOS, False)
    assert "stop" not in mapped  # stop strings are matched on our text, then the request is aborted


def test_greedy_and_sampling_mapping():
    greedy = to_trtllm_sampling_params(SamplingParams(temperature=0, max_tokens=5), EOS)
    assert greedy["top_k"] == 1 and "temperature" not in greedy and "seed" not in greedy
    sampled = to_trtllm_sampling_params(SamplingParams(temperature=0.8, top_p=0.95, seed=11), EOS)
    # All three set: TensorRT-LLM reads "none of temperature/top_p/top_k given" as greedy.
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["seed"]) == (0.8, 0.95, 0, 11)
    unseeded = [to_trtllm_sampling_params(SamplingParams(temperature=1.0), EOS)["seed"] for _ in range(3)]
    assert len(set(unseeded)) == 3 and all(0 <= s < 2 ** 63 for s in unseeded)  # not TensorRT-LLM's fixed 0


def test_penalties_logprobs_and_limits_mapping():
    mapped = to_trtllm_sampling_params(SamplingParams(max_tokens=400, temperature=0, frequency_penalty=0.5,
                                                      presence_penalty=0.25, repetition_penalty=1.2, min_tokens=4,
                                                      stop_token_ids=[13], logprobs=True, ignore_eos=True), EOS,
                                       max_new_tokens=100)
    assert mapped["max_tokens"] == 100  # prompt + max_tokens must fit the engine's max_seq_len
    assert (mapped["frequency_penalty"], mapped["presence_penalty"], mapped["repetition_penalty"]) == (0.5, 0.25, 1.2)
    assert (mapped["min_tokens"], mapped["stop_token_ids"], mapped["ignore_eos"]) == (4, [13], True)
    assert mapped["logprobs"] == 1 and mapped["include_stop_str_in_output"] is True
    plain = to_trtllm_sampling_params(SamplingParams(temperature=0), EOS)
    assert not {"frequency_penalty", "presence_penalty", "repetition_penalty", "min_tokens", "logprobs"} & set(plain)


def test_llm_and_kv_cache_kwargs_use_only_1_2_names(tmp_path):
    llm, kv = llm_kwargs(tmp_path / "engine", {"gather_generation_logits": True}, 0.8)
    assert set(llm) <= fields("TrtLlmArgs") and set(kv) <= fields("KvCacheConfig")
    assert llm["model"] == str(tmp_path / "engine") and llm["gather_generation_logits"] is True
    assert kv == {"free_gpu_memory_fraction": 0.8}


def test_token_logprob_reads_both_formats():
    Logprob = types.SimpleNamespace
    assert token_logprob({5: Logprob(logprob=-0.1, rank=1), 9: Logprob(logprob=-2.5, rank=2)}, 5) == (
        -0.1, [(5, -0.1), (9, -2.5)])
    assert token_logprob(-0.75, 5) == (-0.75, None)
    assert token_logprob(None, 5) == (None, None)


def trt_engine_dir(tmp_path: Path) -> Path:
    build = {"variant": "fp8", "max_batch_size": 16, "max_input_len": 256, "max_seq_len": 512,
             "gather_generation_logits": False}
    Manifest(key="k" * 64, variant="fp8", backend="tensorrt-llm", precision={"weights": "float8_e4m3fn"},
             build=build, source={"model_id": "test"}, calibration=None, versions={}, gpu=None,
             built_at=Manifest.now(), build_seconds=0, artifacts={}).save(tmp_path)
    return tmp_path


def test_without_tensorrt_llm_loading_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # as on a machine without it
    with pytest.raises(TrtbuildError) as err:
        load_engine(trt_engine_dir(tmp_path))
    assert "tensorrt_llm" in str(err.value) and "\n" not in str(err.value)


# --- the streaming adapter, driven by a double of the 1.2 LLM API ----------------------------------------

class FakeRequest:
    """Like TensorRT-LLM's streaming RequestOutput: outputs[0].token_ids grows; abort() cancels."""

    def __init__(self, script: list[int], sampling, end_reason: str):
        self.outputs = [types.SimpleNamespace(token_ids=[], logprobs=[], finish_reason=None, stop_reason=None)]
        self.script, self.sampling, self.end_reason, self.aborted = script, sampling, end_reason, False

    def abort(self):
        self.aborted = True

    async def __aiter__(self):
        out = self.outputs[0]
        for token in self.script[: self.sampling.max_tokens]:
            await asyncio.sleep(0.005)
            if self.aborted:
                out.finish_reason = "cancelled"
                yield self
                return
            out.token_ids.append(token)
            yield self
        out.finish_reason = self.end_reason if len(out.token_ids) < self.sampling.max_tokens else "length"
        yield self


class FakeLLM:
    instances: list = []
    script: list[int] = []
    end_reason = "stop"

    def __init__(self, **kwargs):
        assert set(kwargs) <= fields("TrtLlmArgs"), kwargs
        self.kwargs, self.requests, self.shut_down = kwargs, [], False
        FakeLLM.instances.append(self)

    def generate_async(self, inputs, sampling_params=None, streaming=False):
        assert streaming and list(inputs) == ["prompt_token_ids"]
        asyncio.get_running_loop()  # TensorRT-LLM builds its async queue on the running loop
        request = FakeRequest(self.script, sampling_params, self.end_reason)
        self.requests.append(request)
        return request

    def shutdown(self):
        self.shut_down = True


def fake_sampling_params(**kwargs):
    assert set(kwargs) <= fields("SamplingParams"), kwargs
    return types.SimpleNamespace(**kwargs)


def fake_kv_cache_config(**kwargs):
    assert set(kwargs) <= fields("KvCacheConfig"), kwargs
    return kwargs


@pytest.fixture
def fake_trtllm(monkeypatch, tmp_path):
    top = types.ModuleType("tensorrt_llm")
    top.SamplingParams = fake_sampling_params
    engine_module = types.ModuleType("tensorrt_llm._tensorrt_engine")
    engine_module.LLM = FakeLLM
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llmapi.KvCacheConfig = fake_kv_cache_config
    for name, module in [("tensorrt_llm", top), ("tensorrt_llm._tensorrt_engine", engine_module),
                         ("tensorrt_llm.llmapi", llmapi)]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr("trtbuild.trtllm_backend.require_trtllm", lambda: "1.2.0")
    FakeLLM.instances, FakeLLM.end_reason = [], "stop"
    engine = load_engine(trt_engine_dir(tmp_path))
    yield engine
    engine.close()
    assert FakeLLM.instances[0].shut_down


def test_streams_tokens_and_ends_like_the_torch_backend(fake_trtllm, tokenizer):
    FakeLLM.script = tokenizer.encode("Paris is the capital 🦜 of France", bos=False)
    prompt = tokenizer.encode_chat([{"role": "user", "content": "Capital of France?"}])
    stream = fake_trtllm.submit(prompt, SamplingParams(max_tokens=50, temperature=0))
    assert "".join(e.text for e in stream) == "Paris is the capital 🦜 of France"
    result = stream.result()
    # TensorRT-LLM ended it (end_id is not in its output): our stream ends with its finish reason.
    assert (result.finish_reason, result.token_ids) == ("stop", FakeLLM.script)
    assert fake_trtllm.info.backend == "tensorrt-llm" and fake_trtllm.info.max_seq_len == 512
    sent = FakeLLM.instances[0].requests[0].sampling
    assert (sent.top_k, sent.max_tokens, sent.end_id) == (1, 50, tokenizer.eos_id)
    assert FakeLLM.instances[0].kwargs["kv_cache_config"] == {"free_gpu_memory_fraction": 0.85}


def test_stop_string_and_max_tokens_abort_the_request(fake_trtllm, tokenizer):
    FakeLLM.script = tokenizer.encode("one two three four five six seven", bos=False)
    stopped = fake_trtllm.submit([1, 5], SamplingParams(max_tokens=50, temperature=0, stop=["three"])).result(10)
    assert (stopped.text, stopped.finish_reason, stopped.stop_reason) == ("one two ", "stop", "three")
    assert FakeLLM.instances[0].requests[0].aborted  # no more work for TensorRT-LLM
    limited = fake_trtllm.submit([1, 5], SamplingParams(max_tokens=3, temperature=0)).result(10)
    assert (limited.text, limited.finish_reason) == ("one two three", "length")
    deadline = time.monotonic() + 5
    while fake_trtllm.num_running and time.monotonic() < deadline:  # the adapter lets go right after
        time.sleep(0.01)
    assert fake_trtllm.num_running == 0


def test_cancel_aborts_the_tensorrt_llm_request(fake_trtllm, tokenizer):
    FakeLLM.script = tokenizer.encode(" ".join(["word"] * 200), bos=False)
    stream = fake_trtllm.submit([1, 5], SamplingParams(max_tokens=200, temperature=0))
    for event in stream:
        if event.index == 2:
            break
    stream.cancel()
    result = stream.result(10)
    assert result.finish_reason == "abort" and len(result.token_ids) < 10
    request = FakeLLM.instances[0].requests[0]
    deadline = time.monotonic() + 5
    while not request.outputs[0].finish_reason and time.monotonic() < deadline:
        time.sleep(0.01)
    assert request.aborted and request.outputs[0].finish_reason == "cancelled"


def test_logprobs_need_gathered_logits(fake_trtllm):
    with pytest.raises(ValueError, match="gather_generation_logits"):
        fake_trtllm.submit([1, 5], SamplingParams(logprobs=True))
