"""Engine manifests: what an engine directory is, how it was made, and whether it is still intact.

The engine key is a hash of everything that decides the bytes of an engine (canonical build settings,
the source checkpoint's file hashes, calibration, backend, library versions, GPU), so a cache hit can
never return an engine built from other settings.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from trtbuild import __version__
from trtbuild.errors import TrtbuildError
from trtbuild.workspace import MANIFEST, atomic_write_json

SCHEMA_VERSION = 1
BACKENDS = ("torch", "tensorrt-llm")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under root, by relative path (sorted, so the dict is canonical)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def canonical_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions that change what an engine is (recorded in manifests, part of the engine key)."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "trtbuild": __version__,
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "modelopt": version("nvidia-modelopt"),
        "tensorrt_llm": version("tensorrt_llm") or version("tensorrt-llm"),
    }


def gpu_info() -> dict | None:
    """Name and SM of the first CUDA device, or None on a CPU-only machine."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "sm": f"{major}{minor}"}
    except Exception:  # a broken CUDA install is "no GPU" for our purposes
        return None


def engine_key(build: dict, source_files: dict, backend: str, versions: dict, gpu: dict | None) -> str:
    # Only the versions that change the engine's bytes; python's patch level does not.
    relevant = {k: versions.get(k) for k in ("trtbuild", "torch", "transformers", "modelopt", "tensorrt_llm")}
    if backend == "torch":  # a torch engine directory is plain safetensors: portable across GPUs
        gpu = None
    return canonical_hash({"build": build, "source": source_files, "backend": backend,
                           "versions": relevant, "gpu": gpu})


@dataclass
class Manifest:
    key: str
    variant: str
    backend: str
    precision: dict  # weights / activations / kv_cache dtypes, as stored and as computed
    build: dict  # BuildSettings.to_dict()
    source: dict  # model_id, revision, files {name: sha256}
    calibration: dict | None
    versions: dict
    gpu: dict | None
    built_at: str
    build_seconds: float
    artifacts: dict[str, str]  # relative path -> sha256, every file but the manifest and results
    trtllm: dict = field(default_factory=dict)  # the configs handed (or to hand) to TensorRT-LLM
    results: dict = field(default_factory=dict)  # name -> relative path (validation.json, bench runs)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, engine_dir: Path) -> Path:
        return atomic_write_json(Path(engine_dir) / MANIFEST, self.to_dict())

    @staticmethod
    def now() -> str:
        return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# Files that change after the build (results) and are therefore not part of the artifact hashes.
RESULT_DIRS = ("bench",)
RESULT_FILES = (MANIFEST, "validation.json")


def artifact_hashes(engine_dir: Path) -> dict[str, str]:
    hashes = hash_tree(engine_dir, skip=RESULT_DIRS)
    return {k: v for k, v in hashes.items() if k not in RESULT_FILES}


def load_manifest(engine_dir: str | Path) -> Manifest:
    path = Path(engine_dir) / MANIFEST
    if not path.is_file():
        raise TrtbuildError(f"{engine_dir} has no {MANIFEST}: not a finished engine; rebuild it with `trtbuild compile`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise TrtbuildError(f"{path} is not valid JSON; rebuild the engine with `trtbuild compile --force`") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise TrtbuildError(f"{path} has manifest schema {data.get('schema_version')}, this trtbuild reads "
                            f"{SCHEMA_VERSION}; rebuild the engine with `trtbuild compile --force`")
    return Manifest.from_dict(data)


def verify_engine(engine_dir: str | Path, check_hashes: bool | None = None) -> Manifest:
    """Load a manifest and refuse an engine that cannot run here or was changed since its build.

    TensorRT engines only run on the TensorRT-LLM version and GPU they were built with (TRT-LLM #1038,
    #1324); say so before TensorRT-LLM fails with "Version tag does not match". Hash checking reads
    every byte (about 10 s for a 7 GB engine); TRTBUILD_VERIFY=size checks sizes only.
    """
    engine_dir = Path(engine_dir)
    manifest = load_manifest(engine_dir)
    if manifest.backend == "tensorrt-llm":
        here = library_versions()["tensorrt_llm"]
        built = manifest.versions.get("tensorrt_llm")
        if here is not None and here != built:
            raise TrtbuildError(f"engine {engine_dir.name} was built with tensorrt_llm {built}, this machine has "
                                f"{here}; rebuild it here with `trtbuild compile --force`")
        gpu, built_gpu = gpu_info(), manifest.gpu
        if gpu and built_gpu and gpu["name"] != built_gpu.get("name"):
            raise TrtbuildError(f"engine {engine_dir.name} was built for {built_gpu.get('name')}, this GPU is "
                                f"{gpu['name']}; rebuild it here with `trtbuild compile --force`")
    if check_hashes is None:
        check_hashes = os.environ.get("TRTBUILD_VERIFY", "hash") != "size"
    for rel, expected in manifest.artifacts.items():
        path = engine_dir / rel
        if not path.is_file():
            raise TrtbuildError(f"engine {engine_dir.name} is missing {rel}; rebuild it with `trtbuild compile --force`")
        if check_hashes and sha256_file(path) != expected:
            raise TrtbuildError(f"engine {engine_dir.name}: {rel} changed since it was built (hash mismatch); "
                                "rebuild it with `trtbuild compile --force`")
    return manifest
