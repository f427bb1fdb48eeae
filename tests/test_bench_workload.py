"""Workloads (exact-length prompts, datasets) and seeded arrival processes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trtbuild.bench.arrivals import LoadSpec, inter_arrivals, parse_levels, schedule, sweep
from trtbuild.bench.workload import (BenchRequest, WorkloadSpec, build_requests, check_fits, exact_length_prompt,
                                     read_dataset, write_trtllm_dataset)
from trtbuild.errors import TrtbuildError


@pytest.mark.parametrize("length", [2, 3, 7, 64, 300, 1000])
def test_exact_length_prompts_reencode_to_exact_length(tokenizer, length):
    rng = np.random.default_rng(length)
    for _ in range(10):
        ids, text = exact_length_prompt(tokenizer, length, rng)
        assert len(ids) == length
        assert tokenizer.encode(text, bos=True) == ids  # what a server re-encodes is what we count
        assert ids[0] == tokenizer.bos_id and not set(ids[1:]) & tokenizer.control_ids


@pytest.mark.parametrize("length", [4, 5, 9, 64, 300, 1000])
def test_chat_prompts_are_exact_after_the_template(tokenizer, length):
    rng = np.random.default_rng(length)
    for _ in range(10):
        ids, text = exact_length_prompt(tokenizer, length, rng, chat=True)
        # what a Mistral v3 server templates and counts (BOS included) is exactly the asked length
        assert len(ids) == length
        assert tokenizer.encode_chat([{"role": "user", "content": text}]) == ids
        assert ids[:2] == [tokenizer.bos_id, 3] and ids[-1] == 4  # <s>[INST] ... [/INST]
        assert not set(ids[2:-1]) & tokenizer.control_ids


def test_chat_workload_is_seeded_and_templated(tokenizer, tmp_path):
    spec = WorkloadSpec(input_len=30, output_len=5, num_requests=4, warmup=1, seed=3, endpoint="chat")
    a, b = build_requests(tokenizer, spec), build_requests(tokenizer, spec)
    assert [r.prompt_text for r in a] == [r.prompt_text for r in b] and {r.input_len for r in a} == {30}
    assert all(tokenizer.encode_chat([{"role": "user", "content": r.prompt_text}]) == r.prompt_ids for r in a)
    with pytest.raises(TrtbuildError, match="--input-len must be >= 4"):
        build_requests(tokenizer, WorkloadSpec(input_len=3, endpoint="chat"))
    with pytest.raises(TrtbuildError, match="--endpoint must be completions or chat"):
        build_requests(tokenizer, WorkloadSpec(endpoint="responses"))
    # a dataset for chat: text rows are the message; id rows are decoded (control tokens dropped, so an
    # already templated row is not templated twice); the input length is the templated message's
    templated = tokenizer.encode_chat([{"role": "user", "content": "Hello world"}])
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"input_ids": templated, "output_tokens": 3}) + "\n"
                    + json.dumps({"prompt": "Hi there", "output_tokens": 2}) + "\n")
    reqs = build_requests(tokenizer, WorkloadSpec(dataset=str(path), num_requests=2, warmup=0, endpoint="chat"))
    assert [(r.prompt_text, r.prompt_ids) for r in reqs] == [
        ("Hello world", templated), ("Hi there", tokenizer.encode_chat([{"role": "user", "content": "Hi there"}]))]


def test_offline_refuses_an_endpoint(tmp_path):
    from trtbuild.bench.offline import run_offline_sweep
    from trtbuild.workspace import Workspace

    with pytest.raises(TrtbuildError, match="applies to online runs only"):
        run_offline_sweep(Workspace(tmp_path), None, WorkloadSpec(endpoint="chat"), [LoadSpec()])


def test_synthetic_workload_is_seeded(tokenizer):
    spec = WorkloadSpec(input_len=40, output_len=9, num_requests=5, warmup=2, seed=7)
    a, b = build_requests(tokenizer, spec), build_requests(tokenizer, spec)
    assert [r.prompt_ids for r in a] == [r.prompt_ids for r in b]
    assert [r.warmup for r in a] == [True, True] + [False] * 5  # 5 measured after 2 warm-up
    assert {r.output_len for r in a} == {9} and {r.input_len for r in a} == {40}
    other = build_requests(tokenizer, WorkloadSpec(input_len=40, output_len=9, num_requests=5, warmup=2, seed=8))
    assert [r.prompt_ids for r in other] != [r.prompt_ids for r in a]


def test_dataset_formats_and_round_trip(tokenizer, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"task_id": 0, "input_ids": [1, 1500, 1600], "output_tokens": 4}) + "\n\n"
                    + json.dumps({"prompt": "Hello world", "output_tokens": 2}) + "\n")
    rows = read_dataset(path, tokenizer)
    assert rows[0] == ([1, 1500, 1600], None, 4)
    assert rows[1] == (tokenizer.encode("Hello world", bos=True), "Hello world", 2)
    reqs = build_requests(tokenizer, WorkloadSpec(dataset=str(path), num_requests=3, warmup=1))
    assert [r.output_len for r in reqs] == [4, 2, 4, 2]  # cycled in file order
    out = write_trtllm_dataset(reqs, tmp_path / "trtllm.jsonl")
    back = read_dataset(out, tokenizer)  # our own trtllm-bench export reads back
    assert [(ids, n) for ids, _, n in back] == [(r.prompt_ids, r.output_len) for r in reqs if not r.warmup]


@pytest.mark.parametrize("line, message", [
    ("not json", "data.jsonl:1: not JSON"),
    ('{"input_ids": [1, 2]}', "output_tokens must be a positive integer"),
    ('{"input_ids": [1, 99999999], "output_tokens": 3}', "input_ids must be"),
    ('{"text": "x", "output_tokens": 3}', "needs \"input_ids\""),
])
def test_dataset_errors_name_the_line(tokenizer, tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TrtbuildError, match=message):
        read_dataset(path, tokenizer)
    with pytest.raises(TrtbuildError, match="does not exist"):
        read_dataset(tmp_path / "missing.jsonl", tokenizer)


def test_workload_must_fit_the_engine():
    reqs = [BenchRequest(0, [1] * 100, None, 50)]
    check_fits(reqs, max_input_len=100, max_seq_len=150)
    with pytest.raises(TrtbuildError, match="lower --input-len"):
        check_fits(reqs, max_input_len=100, max_seq_len=149)


def test_poisson_arrivals_have_the_asked_mean_rate_and_are_seeded():
    gaps = inter_arrivals(20000, rate=50.0, arrival="poisson", seed=3)
    assert 1 / gaps.mean() == pytest.approx(50.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    assert np.array_equal(gaps, inter_arrivals(20000, 50.0, "poisson", seed=3))
    assert not np.array_equal(gaps, inter_arrivals(20000, 50.0, "poisson", seed=4))


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_burstiness_keeps_the_rate_and_sets_cv(burstiness):
    gaps = inter_arrivals(40000, rate=10.0, arrival="gamma", burstiness=burstiness, seed=1)
    assert 1 / gaps.mean() == pytest.approx(10.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.05)


def test_constant_schedule_and_load_levels():
    load = LoadSpec(concurrency=None, request_rate=4.0, arrival="constant")
    assert schedule(4, load) == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert parse_levels(("1,4", "16"), "--concurrency", int) == [1, 4, 16]
    loads = sweep([1, 4], [2.5], arrival="gamma", burstiness=0.5)
    assert [(x.concurrency, x.request_rate) for x in loads] == [(1, None), (4, None), (None, 2.5)]
    assert LoadSpec.from_dict(loads[2].to_dict()) == loads[2]
    with pytest.raises(TrtbuildError, match="not a whole number"):
        parse_levels(("1,x",), "--concurrency", int)
    with pytest.raises(TrtbuildError, match="--request-rate must be > 0"):
        sweep([], [0.0])
    with pytest.raises(TrtbuildError, match="--concurrency must be >= 1"):
        sweep([0], [])


def test_profile_bench_table():
    from trtbuild.bench import from_profile

    workload, loads, slo = from_profile({"input_len": 32, "output_len": 8, "concurrency": [1, 4], "request_rate": 2,
                                         "arrival": "gamma", "burstiness": 0.5, "slo": "ttft=500"})
    assert (workload.input_len, workload.output_len) == (32, 8)
    assert [(x.concurrency, x.request_rate, x.arrival) for x in loads] == [(1, None, "poisson"), (4, None, "poisson"),
                                                                            (None, 2.0, "gamma")]
    assert slo.targets() == {"ttft": 500.0}
    with pytest.raises(TrtbuildError, match="unknown setting"):
        from_profile({"inputlen": 3})
    from trtbuild.bench import profile_trials
    from trtbuild.config import load_profile

    assert profile_trials({}) == 1 and profile_trials({"trials": 5}) == 5
    with pytest.raises(TrtbuildError, match="trials must be a whole number >= 1"):
        profile_trials({"trials": 0})
    assert profile_trials(load_profile("cpu-tiny").bench) == 3  # the demo compares intervals, not single runs
    from_profile(load_profile("cpu-tiny").bench)  # "trials" is a known [bench] setting
