"""`trtbuild doctor`: what this machine can do with trtbuild, what it cannot, and the fix for each.

Two halves, so that tests can fake any machine:
  gather(ws)     -> Facts          the probes: each bounded by a timeout, each failure caught and recorded
  assess(facts)  -> DoctorReport   plain rules: one Check row per component, then capabilities and a verdict

Nothing here builds or loads a model; the end-to-end check is `trtbuild doctor --smoke` (smoke.py).
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import importlib.util
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HOPPER_SM = (9, 0)
FP8_MIN_SM = (8, 9)  # FP8 tensor cores: Ada (8.9) and Hopper (9.0); trtbuild's profiles target Hopper
TRTLLM_MIN_SM = (8, 0)  # TensorRT-LLM 1.2's support matrix starts at Ampere
MIN_DRIVER = 580  # TensorRT-LLM 1.2 is built on CUDA 13, whose Linux driver branch is R580
NET_TIMEOUT_S = 3.0  # a hub probe; an unreachable HF_ENDPOINT must not stall the doctor
SMI_TIMEOUT_S = 10.0  # nvidia-smi can be slow on a busy 8-GPU box, but not this slow
CONTAINER = "the container in docker/Dockerfile (NVIDIA's TensorRT-LLM 1.2.1 release image + trtbuild)"


@dataclass
class Facts:
    """What the probes found. None means not found; *_error says why a probe could not answer."""

    python: str = ""
    gpus: list[dict] = field(default_factory=list)  # {"name", "sm": "9.0", "memory_bytes"}
    gpu_source: str | None = None  # nvml, nvidia-smi or torch
    gpu_error: str | None = None
    driver: str | None = None
    cuda_driver: str | None = None  # the CUDA version the driver supports, e.g. "13.0"
    torch: str | None = None
    torch_cuda: str | None = None  # the CUDA torch was built with; None = CPU build
    torch_cuda_available: bool = False
    torch_error: str | None = None
    trtllm: str | None = None
    mpi4py: str | None = None
    libmpi: str | None = None
    workspace: str = ""
    free_bytes: int | None = None
    need_bytes: int = 0  # disk a build of every 7B variant needs
    disk_error: str | None = None
    hub_endpoint: str = ""
    hub_offline: bool = False
    hub_status: int | None = None  # HTTP status of the model's API page, None when not reached
    hub_error: str | None = None
    token_source: str | None = None  # HF_TOKEN or the stored login; the token itself is never kept
    token_status: str = "unchecked"  # valid, rejected, unchecked
    errors: dict[str, str] = field(default_factory=dict)  # probe -> the exception it caught
    seconds: dict[str, float] = field(default_factory=dict)  # probe -> seconds it took

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Facts:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Check:
    name: str
    ok: bool
    found: str
    fix: str = ""  # empty when ok

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DoctorReport:
    checks: list[Check]
    can: list[str]
    cannot: list[dict]  # {"what", "why", "fix"}
    backends: list[str]  # the engine backends this machine can build and run
    verdict: str
    facts: Facts

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "backends": self.backends, "can": self.can, "cannot": self.cannot,
                "checks": [c.to_dict() for c in self.checks], "facts": self.facts.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> DoctorReport:
        return cls(checks=[Check(**c) for c in data["checks"]], can=list(data["can"]), cannot=list(data["cannot"]),
                   backends=list(data["backends"]), verdict=data["verdict"], facts=Facts.from_dict(data["facts"]))

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def format(self) -> str:
        lines = ["trtbuild doctor"]
        for c in self.checks:
            lines.append(f"  {'ok ' if c.ok else 'no '} {c.name:13} {c.found}")
            if c.fix:
                lines.append(f"      {'':13} fix: {c.fix}")
        lines += ["can:"] + [f"  - {what}" for what in self.can]
        if self.cannot:
            lines += ["cannot:"] + [f"  - {c['what']}: {c['why']}\n      fix: {c['fix']}" for c in self.cannot]
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


# --- probes ---------------------------------------------------------------------------------------

def _timed(facts: Facts, name: str, probe, *args) -> None:
    start = time.perf_counter()
    try:
        probe(facts, *args)
    except Exception as exc:  # a probe never crashes the doctor: its failure is a finding
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        facts.errors[name] = f"{type(exc).__name__}: {first}"
        if hasattr(facts, f"{name}_error"):
            setattr(facts, f"{name}_error", facts.errors[name])
    facts.seconds[name] = round(time.perf_counter() - start, 3)


def probe_gpu(facts: Facts) -> None:
    """NVML (nvidia-ml-py) first, then nvidia-smi; torch's view comes from probe_torch."""
    why = []
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731 (old bindings: bytes)
            facts.driver = text(pynvml.nvmlSystemGetDriverVersion())
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            facts.cuda_driver = f"{cuda // 1000}.{cuda % 1000 // 10}"
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                facts.gpus.append({"name": text(pynvml.nvmlDeviceGetName(handle)), "sm": f"{major}.{minor}",
                                   "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)})
            facts.gpu_source = "nvml"
            return
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        why.append("nvidia-ml-py not installed")
    except Exception as exc:
        why.append(f"NVML: {str(exc) or type(exc).__name__}")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        why.append("nvidia-smi not on PATH")
        facts.gpu_error = "; ".join(why)
        return
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        why.append(f"nvidia-smi did not answer in {SMI_TIMEOUT_S:.0f} s")
        facts.gpu_error = "; ".join(why)
        return
    if out.returncode != 0:  # e.g. "couldn't communicate with the NVIDIA driver"
        said = (out.stderr or out.stdout).strip().splitlines()
        why.append(f"nvidia-smi: {said[0][:160] if said else f'exit {out.returncode}'}")
        facts.gpu_error = "; ".join(why)
        return
    for line in out.stdout.strip().splitlines():
        name, sm, driver, mib = [part.strip() for part in line.split(",")]
        facts.driver = driver
        facts.gpus.append({"name": name, "sm": sm, "memory_bytes": int(float(mib)) << 20 if mib[:1].isdigit() else None})
    facts.gpu_source = "nvidia-smi"
    header = subprocess.run([smi], capture_output=True, text=True, timeout=SMI_TIMEOUT_S).stdout
    if "CUDA Version:" in header:
        facts.cuda_driver = header.split("CUDA Version:")[1].split()[0]


def probe_torch(facts: Facts) -> None:
    """Version and CUDA build from torch/version.py, without importing torch (seconds on a busy box);
    a CUDA build is then imported to ask whether CUDA works (and for the GPUs, if NVML and nvidia-smi
    found none)."""
    import ast

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        facts.torch_error = "torch is not installed"
        return
    version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    values = {}
    for node in ast.parse(version_file.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and isinstance(getattr(node, "value", None), ast.Constant):
            values[target.id] = node.value.value
    facts.torch, facts.torch_cuda = values.get("__version__"), values.get("cuda")
    if facts.torch_cuda is None:
        return  # a CPU build: no CUDA device is usable through it
    import torch  # a CUDA build: whether it works with this driver only torch can tell

    facts.torch_cuda_available = bool(torch.cuda.is_available())
    if facts.torch_cuda_available:  # NVML and nvidia-smi absent, but CUDA works
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            props = torch.cuda.get_device_properties(i)
            facts.gpus.append({"name": props.name, "sm": f"{major}.{minor}", "memory_bytes": int(props.total_memory)})
        facts.gpu_source = "torch"


def probe_trtllm(facts: Facts) -> None:
    from trtbuild.trtllm_backend import installed_version

    facts.trtllm = installed_version()  # package metadata only: importing tensorrt_llm takes seconds


def probe_mpi(facts: Facts) -> None:
    if importlib.util.find_spec("mpi4py") is not None:  # not `import mpi4py.MPI`: that would MPI_Init
        facts.mpi4py = metadata.version("mpi4py")
    facts.libmpi = ctypes.util.find_library("mpi")


def probe_disk(facts: Facts, root: Path) -> None:
    from trtbuild.config import load_profile
    from trtbuild.plan import load_model_config, plan_memory

    facts.workspace = str(root)
    existing = Path(root)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    facts.free_bytes = shutil.disk_usage(existing).free
    facts.need_bytes = build_disk_need(load_profile("h100-mistral-7b"), load_model_config, plan_memory)


def build_disk_need(profile, load_model_config, plan_memory) -> int:
    """Bytes a build of every variant of the 7B profile needs: the checkpoint, every engine, and
    TensorRT-LLM's scratch for the largest build (its converted checkpoint + engine, before the copy)."""
    config = load_model_config(profile.model.id, None, profile.model.revision)
    engines = [plan_memory(config, s, gpu=profile.gpu).weight_bytes for s in profile.variants.values()]
    source = plan_memory(config, profile.variants["fp16"], gpu=profile.gpu).weight_bytes
    return source + sum(engines) + 2 * max(engines)


def probe_hub(facts: Facts) -> None:
    import httpx

    from trtbuild import REAL_MODEL
    from trtbuild.fetch import hub_endpoint, hub_offline

    facts.hub_endpoint, facts.hub_offline = hub_endpoint(), hub_offline()
    token = os.environ.get("HF_TOKEN") or None
    facts.token_source = "HF_TOKEN" if token else None
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
        facts.token_source = "stored login (huggingface-cli login)" if token else None
    if facts.hub_offline:
        return  # HF_HUB_OFFLINE=1: trtbuild will not contact the hub, so neither does the doctor
    try:
        facts.hub_status = httpx.get(f"{facts.hub_endpoint}/api/models/{REAL_MODEL}", timeout=NET_TIMEOUT_S).status_code
    except httpx.HTTPError as exc:
        facts.hub_error = f"{type(exc).__name__}: {str(exc)[:160]}"
        return
    if token:
        try:  # the token goes in a header only; neither it nor the answer's body is printed
            status = httpx.get(f"{facts.hub_endpoint}/api/whoami-v2", timeout=NET_TIMEOUT_S,
                               headers={"Authorization": f"Bearer {token}"}).status_code
            facts.token_status = "valid" if status == 200 else "rejected" if status in (401, 403) else "unchecked"
        except httpx.HTTPError:
            pass


def gather(ws) -> Facts:
    """Run every probe; each is bounded and its failure recorded, never raised."""
    facts = Facts(python=platform.python_version())
    _timed(facts, "gpu", probe_gpu)
    _timed(facts, "torch", probe_torch)
    _timed(facts, "trtllm", probe_trtllm)
    _timed(facts, "mpi", probe_mpi)
    _timed(facts, "disk", probe_disk, ws.root)
    _timed(facts, "hub", probe_hub)
    return facts


# --- rules ----------------------------------------------------------------------------------------

def _sm(gpu: dict) -> tuple[int, int]:
    try:
        major, minor = str(gpu["sm"]).split(".")
        return int(major), int(minor)
    except (KeyError, ValueError):
        return (0, 0)


def _gb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.1f} GB"


def assess(facts: Facts) -> DoctorReport:
    from trtbuild.errors import TrtbuildError
    from trtbuild.trtllm_backend import INSTALL_HINT, SUPPORTED_MAJOR_MINOR, check_version

    checks = []
    gpu = max(facts.gpus, key=_sm) if facts.gpus else None
    sm = _sm(gpu) if gpu else (0, 0)
    if gpu is None:
        checks.append(Check("gpu", False, f"no NVIDIA GPU found ({facts.gpu_error or 'no device'})",
                            "run on an NVIDIA Hopper GPU (H100/H200, SM 9.0) with the NVIDIA driver installed"))
    else:
        hopper = "Hopper" if sm == HOPPER_SM else "not Hopper"
        many = f" (+{len(facts.gpus) - 1} more)" if len(facts.gpus) > 1 else ""
        checks.append(Check("gpu", sm >= FP8_MIN_SM, f"{gpu['name']}{many}, SM {gpu['sm']} ({hopper}), "
                            f"{_gb(gpu.get('memory_bytes'))}, via {facts.gpu_source}",
                            "" if sm >= FP8_MIN_SM else "FP8 engines need SM 8.9+ (Hopper is SM 9.0): use an "
                                                         "H100/H200; fp16 engines still build on SM 8.0+"))
    major = int(facts.driver.split(".")[0]) if facts.driver and facts.driver.split(".")[0].isdigit() else None
    if major is None:
        checks.append(Check("driver", False, "no NVIDIA driver found",
                            f"install the NVIDIA driver R{MIN_DRIVER} or newer (CUDA 13)"))
    else:
        checks.append(Check("driver", major >= MIN_DRIVER, facts.driver,
                            "" if major >= MIN_DRIVER else f"TensorRT-LLM 1.2 needs CUDA 13: upgrade the driver to "
                                                           f"R{MIN_DRIVER} or newer"))
    cuda_major = int(facts.cuda_driver.split(".")[0]) if facts.cuda_driver else None
    checks.append(Check("cuda", cuda_major is not None and cuda_major >= 13,
                        f"driver supports CUDA {facts.cuda_driver}" if facts.cuda_driver else "no CUDA driver",
                        "" if cuda_major is not None and cuda_major >= 13 else
                        f"TensorRT-LLM 1.2 needs CUDA 13 (driver R{MIN_DRIVER}+); run in {CONTAINER}"))
    if facts.torch is None:
        checks.append(Check("torch", False, f"not importable ({facts.torch_error})",
                            "pip install torch==2.13.0 (CPU), or use NVIDIA's container on a GPU box"))
    else:
        build = f"CUDA {facts.torch_cuda} build" if facts.torch_cuda else "CPU build"
        usable = "CUDA available" if facts.torch_cuda_available else "no CUDA device"
        checks.append(Check("torch", True, f"{facts.torch} ({build}, {usable})"))
    supported = f"{SUPPORTED_MAJOR_MINOR}.x"
    try:
        check_version(facts.trtllm)
        checks.append(Check("tensorrt_llm", True, f"{facts.trtllm} (supported: {supported})"))
    except TrtbuildError as exc:
        found = "not installed" if facts.trtllm is None else f"{facts.trtllm}, outside the supported {supported}"
        fix = (f"use {CONTAINER}, or {INSTALL_HINT}" if facts.trtllm is None else
               f"{str(exc).split(':')[0]}: install it (pip install --extra-index-url https://pypi.nvidia.com "
               f"'tensorrt_llm>={SUPPORTED_MAJOR_MINOR},<1.3') or use {CONTAINER}")
        checks.append(Check("tensorrt_llm", False, found, fix))
    mpi_ok = facts.mpi4py is not None
    checks.append(Check("mpi", mpi_ok, f"mpi4py {facts.mpi4py or 'missing'}, libmpi {facts.libmpi or 'missing'}",
                        "" if mpi_ok else "TensorRT-LLM runs its workers under MPI: apt-get install libopenmpi-dev "
                                          "&& pip install mpi4py (NVIDIA's container has both)"))
    disk_ok = facts.free_bytes is not None and facts.free_bytes >= facts.need_bytes
    checks.append(Check("disk", disk_ok, f"{_gb(facts.free_bytes)} free in {facts.workspace or '?'}; a 7B build "
                        f"of fp16 + fp8 + fp8-kv8 needs about {_gb(facts.need_bytes)}"
                        + (f" ({facts.disk_error})" if facts.disk_error else ""),
                        "" if disk_ok else "free space or point --workspace / TRTBUILD_WORKSPACE at a larger "
                                           "disk (the embedded model needs well under 1 GB)"))
    if facts.hub_offline:
        hub_ok, found = False, "HF_HUB_OFFLINE=1: the hub is not contacted, only the workspace's cache is used"
        fix = "unset HF_HUB_OFFLINE to download, or `trtbuild fetch` on a connected machine and copy the workspace"
    elif facts.hub_status is None:
        hub_ok, found = False, f"{facts.hub_endpoint} unreachable ({facts.hub_error})"
        fix = "connect to the internet or set HF_ENDPOINT to a reachable mirror; the embedded model needs no hub"
    else:
        hub_ok, found, fix = True, f"{facts.hub_endpoint} answered {facts.hub_status}", ""
    checks.append(Check("hub", hub_ok, found, fix))
    token_ok = facts.token_source is not None and facts.token_status != "rejected"
    token_found = ("none" if facts.token_source is None else
                   f"present ({facts.token_source}), {facts.token_status}")
    checks.append(Check("token", token_ok, token_found, "" if token_ok else
                        "Mistral-7B-Instruct-v0.3 is gated: accept its terms on the hub, then set HF_TOKEN to a "
                        "token of that account (https://huggingface.co/settings/tokens)"))
    return _capabilities(facts, checks)


def _capabilities(facts: Facts, checks: list[Check]) -> DoctorReport:
    ok = {c.name: c for c in checks}  # name -> its Check
    can, cannot, backends = [], [], []
    if ok["torch"].ok:
        backends.append("torch")
        can.append("torch backend: build, validate, serve and bench the embedded model builtin:tiny-mistral "
                   f"(and any checkpoint that fits memory) on {'GPU' if facts.torch_cuda_available else 'CPU'}")
    trt_needs = [c for c in (ok["gpu"], ok["driver"], ok["cuda"], ok["tensorrt_llm"], ok["mpi"]) if not c.ok]
    best_sm = max((_sm(g) for g in facts.gpus), default=(0, 0))
    if not trt_needs:
        backends.insert(0, "tensorrt-llm")
        can.append("tensorrt-llm backend: TensorRT engines in fp16, fp8 and fp8-kv8 (`trtbuild doctor --smoke` "
                   "checks the whole path in a few minutes)")
    elif [c.name for c in trt_needs] == ["gpu"] and best_sm >= TRTLLM_MIN_SM:  # Ampere: no FP8
        backends.insert(0, "tensorrt-llm")
        can.append("tensorrt-llm backend: fp16 TensorRT engines only")
        cannot.append({"what": "FP8 TensorRT engines", "why": ok["gpu"].found, "fix": ok["gpu"].fix})
    else:
        cannot.append({"what": "tensorrt-llm backend (TensorRT engines)",
                       "why": "missing " + ", ".join(c.name for c in trt_needs) + " (see those rows)",
                       "fix": trt_needs[0].fix if len(trt_needs) == 1 else
                       f"on an H100/H200 with driver R{MIN_DRIVER}+, run trtbuild in {CONTAINER}"})
    if ok["hub"].ok and ok["token"].ok:
        can.append("fetch mistralai/Mistral-7B-Instruct-v0.3 from the hub")
    else:
        bad = [c for c in (ok["hub"], ok["token"]) if not c.ok]
        cannot.append({"what": "fetch mistralai/Mistral-7B-Instruct-v0.3 from the hub",
                       "why": "; ".join(f"{c.name}: {c.found}" for c in bad), "fix": " | ".join(c.fix for c in bad)})
    if ok["disk"].ok:
        can.append("hold the 7B checkpoint and all three engines in the workspace")
    else:
        cannot.append({"what": "hold the 7B checkpoint and engines in the workspace", "why": ok["disk"].found,
                       "fix": ok["disk"].fix})
    if "tensorrt-llm" in backends:
        what = "fp16 TensorRT engines" if "FP8 TensorRT engines" in [c["what"] for c in cannot] else \
            "TensorRT-LLM engines (fp16, fp8, fp8-kv8)"
        verdict = f"this machine can build, validate, serve and bench {what}, and run the torch backend"
    elif backends == ["torch"]:
        verdict = ("this machine can run the torch backend only (no TensorRT-LLM engines here: "
                   + ", ".join(c.name for c in trt_needs) + ")")
    else:
        verdict = "this machine cannot run trtbuild's engines: install torch (see the torch row)"
    return DoctorReport(checks, can, cannot, backends, verdict, facts)


def diagnose(ws) -> DoctorReport:
    return assess(gather(ws))
