"""`trtbuild doctor`: the real probes on this machine, faked probes for GPU boxes, hostile environments,
`--smoke` (refused without TensorRT-LLM; end to end on the torch backend) and `compile --print-key`."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import trtbuild
from trtbuild import doctor
from trtbuild.doctor import DoctorReport, Facts, assess, diagnose
from trtbuild.workspace import Workspace

CHECKS = ["gpu", "driver", "cuda", "torch", "tensorrt_llm", "mpi", "disk", "hub", "token"]
HAS_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Offline and tokenless unless a test says otherwise: the doctor must not reach the real hub in tests."""
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRTBUILD_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-trtbuild-test-hf-home")  # no stored login either


def hopper(**changes) -> Facts:
    """What the probes find on an H100 in NVIDIA's TensorRT-LLM 1.2.1 container."""
    facts = Facts(python="3.12.3", gpus=[{"name": "NVIDIA H100 80GB HBM3", "sm": "9.0", "memory_bytes": 85520809984}],
                  gpu_source="nvml", driver="580.65.06", cuda_driver="13.0", torch="2.9.0a0+145a3a7bda.nv25.10",
                  torch_cuda="13.0", torch_cuda_available=True, trtllm="1.2.1", mpi4py="4.1.0",
                  libmpi="libmpi.so.40", workspace="/workspace", free_bytes=500 * 10**9, need_bytes=73 * 10**9,
                  hub_endpoint="https://huggingface.co", hub_status=200, token_source="HF_TOKEN", token_status="valid")
    for name, value in changes.items():
        setattr(facts, name, value)
    return facts


def fake_probes(monkeypatch, facts: Facts) -> None:
    """Replace every probe of gather() by one that copies `facts` in: the CLI then runs on that machine."""
    def copy(target, *args):
        for name, value in facts.to_dict().items():
            if name not in ("seconds", "errors"):
                setattr(target, name, value)

    for probe in ("probe_gpu", "probe_torch", "probe_trtllm", "probe_mpi", "probe_disk", "probe_hub"):
        monkeypatch.setattr(doctor, probe, copy)


# --- this machine -----------------------------------------------------------------------------------

def test_doctor_runs_here_and_says_what_it_can(tmp_path):
    env = {**os.environ, "TRTBUILD_WORKSPACE": str(tmp_path / "ws"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "trtbuild.cli", "doctor", "--json"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [c["name"] for c in data["checks"]] == CHECKS
    assert DoctorReport.from_dict(data).to_dict() == data  # JSON round trip
    if HAS_TRTLLM:  # a GPU box in NVIDIA's container: whatever it lacks, it is not "torch only" for lack of the library
        assert data["checks"][CHECKS.index("tensorrt_llm")]["found"] != "not installed"
    else:  # here (and CI): no tensorrt_llm, so TensorRT engines are out, and the verdict says so plainly
        assert data["backends"] == ["torch"]
        assert data["verdict"].startswith("this machine can run the torch backend only")
        trt = next(c for c in data["cannot"] if c["what"].startswith("tensorrt-llm backend"))
        assert "tensorrt_llm" in trt["why"] and trt["fix"]
    for check in data["checks"]:  # every gap comes with its fix
        assert check["ok"] or check["fix"], check
    human = subprocess.run([sys.executable, "-m", "trtbuild.cli", "doctor"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert human.returncode == 0 and f"verdict: {data['verdict']}" in human.stdout


def test_hostile_hub_environment_is_quick_and_never_prints_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.perf_counter()
    offline = diagnose(Workspace(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # "0", not unset: huggingface_hub's import-time default stays 1 here
    unreachable = diagnose(Workspace(tmp_path))
    # Each probe is bounded (network 3 s, nvidia-smi 10 s); 30 s leaves room for a loaded 2-core machine.
    assert time.perf_counter() - start < 30
    assert not offline.check("hub").ok and "HF_HUB_OFFLINE=1" in offline.check("hub").found
    assert offline.facts.hub_status is None and offline.facts.hub_error is None  # not even tried
    hub = unreachable.check("hub")
    assert not hub.ok and "http://127.0.0.1:9 unreachable" in hub.found and "HF_ENDPOINT" in hub.fix
    for report in (offline, unreachable):
        assert report.check("token").ok and report.check("token").found == "present (HF_TOKEN), unchecked"
        assert "hf_bad" not in json.dumps(report.to_dict()) and "hf_bad" not in report.format()
        assert any(c["what"].startswith("fetch mistralai") for c in report.cannot)


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The model page answers; whoami rejects every token, as the hub does for a bad one."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        status = 401 if self.path == "/api/whoami-v2" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_a_rejected_token_is_a_cannot_with_the_fix(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("HF_TOKEN", "hf_bad")
        report = diagnose(Workspace(tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert report.check("hub").ok and report.check("hub").found.endswith("answered 200")
    token = report.check("token")
    assert not token.ok and token.found == "present (HF_TOKEN), rejected" and "HF_TOKEN" in token.fix
    assert "hf_bad" not in json.dumps(report.to_dict())


def test_nvidia_smi_without_nvml_is_parsed_and_a_hung_one_times_out(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py absent: import fails
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nif [ -n \"$1\" ]; then echo 'NVIDIA H100 80GB HBM3, 9.0, 580.65.06, 81559'; "
                   "else echo '| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |'; fi\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    facts = Facts()
    doctor.probe_gpu(facts)
    assert facts.gpus == [{"name": "NVIDIA H100 80GB HBM3", "sm": "9.0", "memory_bytes": 81559 << 20}]
    assert (facts.gpu_source, facts.driver, facts.cuda_driver) == ("nvidia-smi", "580.65.06", "13.0")

    smi.write_text("#!/bin/sh\nsleep 30\n")
    monkeypatch.setattr(doctor, "SMI_TIMEOUT_S", 0.5)
    facts, start = Facts(), time.perf_counter()
    doctor.probe_gpu(facts)
    assert time.perf_counter() - start < 10  # the 0.5 s timeout, not the 30 s sleep
    assert facts.gpus == [] and "nvidia-smi did not answer" in facts.gpu_error
    assert "nvidia-ml-py not installed" in facts.gpu_error


def test_a_crashing_probe_becomes_a_finding(tmp_path, monkeypatch):
    def broken(facts):
        raise OSError("libmpi.so: cannot open shared object file")

    monkeypatch.setattr(doctor, "probe_mpi", broken)
    report = diagnose(Workspace(tmp_path))
    assert report.facts.errors["mpi"].startswith("OSError: libmpi.so")
    assert not report.check("mpi").ok and "mpi4py" in report.check("mpi").fix


# --- other machines, through faked probes ------------------------------------------------------------

def test_hopper_with_trtllm_1_2_1_can_build(tmp_path, monkeypatch, capsys):
    fake_probes(monkeypatch, hopper())
    code, out, err = trtbuild(capsys, Workspace(tmp_path), "doctor", "--json", "--require", "tensorrt-llm")
    assert code == 0, err
    data = json.loads(out)
    assert data["backends"] == ["tensorrt-llm", "torch"] and data["cannot"] == []
    assert all(c["ok"] for c in data["checks"])
    assert data["verdict"].startswith("this machine can build, validate, serve and bench TensorRT-LLM engines "
                                      "(fp16, fp8, fp8-kv8)")
    assert "SM 9.0 (Hopper)" in data["checks"][0]["found"]


def test_trtllm_1_1_is_unsupported_with_the_fix(tmp_path, monkeypatch, capsys):
    fake_probes(monkeypatch, hopper(trtllm="1.1.0"))
    code, out, err = trtbuild(capsys, Workspace(tmp_path), "doctor", "--json")
    assert code == 0, err
    data = json.loads(out)
    check = next(c for c in data["checks"] if c["name"] == "tensorrt_llm")
    assert not check["ok"] and check["found"] == "1.1.0, outside the supported 1.2.x"
    assert "tensorrt_llm>=1.2,<1.3" in check["fix"] and "docker/Dockerfile" in check["fix"]
    assert data["backends"] == ["torch"] and data["verdict"].startswith("this machine can run the torch backend only")
    code, out, err = trtbuild(capsys, Workspace(tmp_path), "doctor", "--require", "tensorrt-llm")
    assert code == 1 and err.startswith("error: this machine cannot run the tensorrt-llm backend")


def test_ampere_builds_fp16_engines_only():
    report = assess(hopper(gpus=[{"name": "NVIDIA A100-SXM4-80GB", "sm": "8.0", "memory_bytes": 85 * 10**9}]))
    assert report.backends == ["tensorrt-llm", "torch"]
    assert report.verdict.startswith("this machine can build, validate, serve and bench fp16 TensorRT engines")
    assert [c["what"] for c in report.cannot] == ["FP8 TensorRT engines"]


def test_old_driver_small_disk_and_no_mpi_each_have_a_fix():
    report = assess(hopper(driver="535.104.05", cuda_driver="12.2", mpi4py=None, libmpi=None, free_bytes=20 * 10**9))
    bad = {c.name: c for c in report.checks if not c.ok}
    assert set(bad) == {"driver", "cuda", "mpi", "disk"}
    assert "R580" in bad["driver"].fix and "libopenmpi-dev" in bad["mpi"].fix and "--workspace" in bad["disk"].fix
    assert report.backends == ["torch"]


def test_disk_need_is_the_checkpoint_every_engine_and_build_scratch():
    from trtbuild.config import load_profile
    from trtbuild.plan import load_model_config, plan_memory

    profile = load_profile("h100-mistral-7b")
    need = doctor.build_disk_need(profile, load_model_config, plan_memory)
    # 7.25 B params: fp16 checkpoint 14.5 GB + engines 14.5 + 7.5 + 7.5 + scratch 2 x 14.5 = 73 GB
    assert 70e9 < need < 76e9


# --- --smoke ----------------------------------------------------------------------------------------

def test_smoke_refuses_without_trtllm_in_one_line(tmp_path, monkeypatch, capsys):
    fake_probes(monkeypatch, hopper(trtllm=None, gpus=[], driver=None, cuda_driver=None))
    code, out, err = trtbuild(capsys, Workspace(tmp_path), "doctor", "--smoke")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: --smoke needs TensorRT-LLM 1.2.x on an NVIDIA GPU")
    assert "--backend torch" in err
    assert not (tmp_path / "engines").exists()  # refused before building anything


def test_smoke_refuses_fp8_engines_below_sm_8_9(tmp_path, monkeypatch, capsys):
    fake_probes(monkeypatch, hopper(gpus=[{"name": "NVIDIA A100-SXM4-80GB", "sm": "8.0", "memory_bytes": 85 * 10**9}]))
    code, out, err = trtbuild(capsys, Workspace(tmp_path), "doctor", "--smoke")
    assert code == 1 and err.count("\n") == 1 and "need SM 8.9+ (Hopper is SM 9.0)" in err
    assert not (tmp_path / "engines").exists()


@pytest.mark.slow
def test_smoke_on_the_torch_backend_end_to_end(workspace, engine_dirs, capsys):
    code, out, err = trtbuild(capsys, workspace, "doctor", "--smoke", "--backend", "torch", "--json")
    assert code == 0, err
    smoke = json.loads(out)["smoke"]
    assert smoke["backend"] == "torch" and smoke["passed"]
    assert smoke["label"].startswith("torch backend standing in for TensorRT-LLM")
    assert [r["variant"] for r in smoke["rows"]] == ["fp16", "fp8"]
    for row in smoke["rows"]:
        assert row["engine"] == engine_dirs[row["variant"]].name  # the same engines `compile` makes
        assert row["validate"] == "pass" and row["ok"] and row["errors"] == []
        assert row["serve"].startswith("200, ") and row["bench"].endswith(" out tok/s")
        assert set(row["seconds"]) == {"build", "validate", "serve", "bench"}
    saved = Path(smoke["path"])
    assert json.loads(saved.read_text()) == smoke
    assert list((saved.parent / "bench").iterdir())  # bench runs stay in the smoke's folder, not the engines'
