"""lm-evaluation-harness against `trtbuild serve`, as accuracy users run it: a multiple-choice task through
`local-completions` (prompts as token ids from the server's own /tokenize, scored with echo + logprobs on
/v1/completions) and a generation task through `local-chat-completions`. Both tasks are bundled in
tests/lm_eval_tasks (local JSONL files, no hub). Each accuracy is printed and compared with the same task
scored in-process on the same engine (Engine.score / Engine.generate), request by request.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trtbuild.runtime import SamplingParams, load_engine
from trtbuild.server.process import ServerProcess

TASKS = Path(__file__).parent / "lm_eval_tasks"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm_eval_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-datasets")
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_CACHE")}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(cache))
    cwd = os.getcwd()
    os.chdir(TASKS)  # the task YAMLs name their data files relative to it
    yield
    os.chdir(cwd)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def served(workspace, engine_dirs, tmp_path_factory, lm_eval_env):
    log = tmp_path_factory.mktemp("lm-eval-log") / "server.log"
    with ServerProcess(engine_dirs["fp16"], workspace.root, [], log_path=log) as server:
        yield server


@pytest.fixture(scope="module")
def engine(engine_dirs):
    with load_engine(engine_dirs["fp16"]) as engine:
        yield engine


def evaluate(model: str, model_args: dict, task: str, **kw) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[task], task_manager=manager,
                                  log_samples=True, **kw)
    return {"results": out["results"][task], "samples": out["samples"][task]}


def test_multiple_choice_through_local_completions_matches_in_process(served, engine):
    out = evaluate("local-completions", {"model": served.model, "base_url": f"{served.base_url}/completions",
                                         "tokenizer_backend": "remote", "max_retries": 1}, "trtbuild_capitals_mc")
    tokenizer = engine.tokenizer
    correct = []
    for sample in out["samples"]:
        scores = []
        for (context, continuation), served_score in zip(sample["arguments"], sample["resps"]):
            # lm-eval's split (TemplateLM._encode_pair): encode context + continuation, cut at the context
            whole = tokenizer.encode(context + continuation, bos=False)
            context_ids = tokenizer.encode(context, bos=False)
            target = whole[len(context_ids):]
            rows = engine.score(context_ids, target)
            score = float(sum(rows[i][t] for i, t in enumerate(target)))
            # one float32 model, a prefill vs a whole-sequence score: reduction-order noise only
            assert abs(score - served_score[0][0]) < 1e-3, (context, continuation)
            scores.append(score)
        correct.append(max(range(len(scores)), key=scores.__getitem__) == sample["target"])
    in_process = sum(correct) / len(correct)
    print(f"\ntrtbuild_capitals_mc acc: lm-eval via server {out['results']['acc,none']:.3f}, in-process {in_process:.3f}")
    assert out["results"]["acc,none"] == pytest.approx(in_process)
    assert len(out["samples"]) == 8


def test_generation_through_local_chat_completions_matches_in_process(served, engine):
    out = evaluate("local-chat-completions", {"model": served.model, "base_url": f"{served.base_url}/chat/completions",
                                              "max_retries": 1}, "trtbuild_chat_gen", apply_chat_template=True)
    tokenizer = engine.tokenizer
    hits = []
    for sample in out["samples"]:
        prompt = tokenizer.encode_chat([{"role": "user", "content": sample["doc"]["question"]}])
        text = engine.generate([prompt], SamplingParams(max_tokens=24, temperature=0, stop=["\n\n"]))[0].text
        assert text == sample["resps"][0][0]
        hits.append(text == sample["target"])
    in_process = sum(hits) / len(hits)
    print(f"\ntrtbuild_chat_gen exact_match: lm-eval via server {out['results']['exact_match,none']:.3f}, "
          f"in-process {in_process:.3f}")
    assert out["results"]["exact_match,none"] == pytest.approx(in_process)
    assert in_process >= 0.5  # the model was taught these answers: most must come back word for word
