"""The TensorRT-LLM runtime's plain functions: what we hand TensorRT-LLM (checked against the 1.2 names), what
we read back (context logits -> teacher-forced scores), when we abort, and the clear error where it is
missing. The adapter itself runs end to end on the 1.2 contract double in tests/test_trtllm_double.py.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from trtbuild.errors import TrtbuildError
from trtbuild.manifest import Manifest
from trtbuild.runtime import SamplingParams, load_engine
from trtbuild.runtime.trtllm_runtime import (abort_if_running, context_logprobs, guided_decoding_unavailable, llm_kwargs,
                                             scoring_sampling_params, to_trtllm_sampling_params, token_logprob)

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


def test_llm_kwargs_enable_xgrammar_with_the_engines_hf_tokenizer(tmp_path):
    """Guided decoding as TensorRT-LLM 1.2's TensorRT backend does it (fixture TrtLlmArgs.guided_decoding:
    llm.py@4c05a748 _TrtLLM._build_model, llm_args.py index id 1090804222, tokenizer.py@89fd9b74): backend
    "xgrammar" (the only one _TrtLLM accepts), a tokenizer loaded from the engine dir (tokenizer.json: a
    PreTrainedTokenizerFast), so skip_tokenizer_init must be False (True leaves tokenizer None)."""
    engine = tmp_path / "engine"
    engine.mkdir()
    without, _ = llm_kwargs(engine, {}, 0.8)
    assert without["skip_tokenizer_init"] is True and "guided_decoding_backend" not in without and "tokenizer" not in without
    reason = guided_decoding_unavailable(without, "fp16-x")
    assert "tokenizer.json" in reason and "fp16-x" in reason and "\n" not in reason
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (engine / name).write_text("{}")
    llm, _ = llm_kwargs(engine, {}, 0.8)
    assert (llm["skip_tokenizer_init"], llm["tokenizer"], llm["guided_decoding_backend"]) == (False, str(engine), "xgrammar")
    assert set(llm) <= fields("TrtLlmArgs") and set(llm) <= set(API["TrtLlmArgs"]["used_by_trtbuild"])
    assert "xgrammar" in API["TrtLlmArgs"]["guided_decoding"]["trt_backend"]
    assert guided_decoding_unavailable(llm, "fp16-x") is None


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


# --- scoring and aborting ------------------------------------------------------------------------------

def test_scoring_request_uses_only_1_2_names():
    params = scoring_sampling_params(EOS)
    assert set(params) <= fields("SamplingParams")
    # one token (a request must generate), greedy, and the context logits that scoring reads
    assert (params["max_tokens"], params["top_k"], params["return_context_logits"]) == (1, 1, True)
    assert "prompt_logprobs" not in params  # top-k only, without the prompt token's own value: no KL


def test_context_logprobs_rows_predict_the_continuation():
    import numpy as np
    import torch

    vocab, prompt, continuation = 6, [1, 4, 2], [5, 3]
    ids = prompt + continuation
    # row i of the context logits predicts token i + 1: make each row put all its mass on that token
    logits = torch.full((len(ids), vocab), -30.0)
    for i, nxt in enumerate(ids[1:] + [0]):
        logits[i, nxt] = 30.0
    for shaped in (logits, logits[None]):  # [tokens, vocab] and [1, tokens, vocab]
        scores = context_logprobs(shaped, len(prompt), len(continuation))
        assert scores.shape == (2, vocab) and scores.dtype == np.float32
        assert list(scores.argmax(-1)) == continuation
        np.testing.assert_allclose(np.exp(scores).sum(-1), 1.0, rtol=1e-5)  # log_softmax rows
    with pytest.raises(Exception, match="context logits of shape"):
        context_logprobs(logits[:2], len(prompt), len(continuation))


def test_abort_only_requests_still_running():
    class Output:
        def __init__(self, finished, aborted):
            self.finished, self._aborted, self.calls = finished, aborted, 0

        def aborted(self):
            return self._aborted

        def abort(self):
            self.calls += 1

    running, done, again = Output(False, False), Output(True, False), Output(False, True)
    assert [abort_if_running(o) for o in (running, done, again, None)] == [True, False, False, False]
    assert (running.calls, done.calls, again.calls) == (1, 0, 0)
