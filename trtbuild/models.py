"""Source checkpoints: what a model id means, and the exact files a build starts from.

A model id is one of
  - "builtin:tiny-mistral": the embedded model, created and cached in the workspace (tiny_model.py);
  - a local directory holding a Hugging Face checkpoint (config.json + *.safetensors): used in place;
  - a hub repository id ("mistralai/Mistral-7B-Instruct-v0.3"): downloaded into the workspace's hub cache
    (fetch.py), pinned to the commit it resolved to.
Each becomes a SourceModel whose `files` (relative path -> sha256) feed engine and quantization keys, so
a changed checkpoint can never hit a stale cache.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

from trtbuild.errors import TrtbuildError
from trtbuild.manifest import sha256_file
from trtbuild.workspace import Workspace

BUILTIN_TINY = "builtin:tiny-mistral"

# The files the Hugging Face pipeline reads. Not consolidated.safetensors / params.json (Mistral's own
# format): they would double a 7B download (29 GB instead of 14.5 GB).
PIPELINE_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer.model.v3",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class SourceModel:
    model_id: str  # as the user named it: builtin name, hub id, or local path
    revision: str | None  # the commit sha for hub models; None for local and builtin models
    path: Path  # the directory transformers and modelopt load
    files: dict[str, str]  # relative path -> sha256 of every pipeline file

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SourceModel:
        return cls(model_id=data["model_id"], revision=data.get("revision"), path=Path(data["path"]),
                   files=dict(data["files"]))


def resolve_source(ws: Workspace, model_id: str, revision: str | None = None, *, token: str | None = None,
                   progress: bool = True) -> SourceModel:
    """A model id (builtin name, local directory or hub id) -> a SourceModel ready to build from."""
    model_id = str(model_id)
    if model_id == BUILTIN_TINY:
        _no_revision(model_id, revision)
        from trtbuild.tiny_model import ensure_tiny_model

        path = ensure_tiny_model(ws, progress=progress)
        return SourceModel(model_id, None, path, pipeline_file_hashes(path))
    if model_id.startswith("builtin:"):
        raise TrtbuildError(f"unknown builtin model {model_id!r}; the embedded model is {BUILTIN_TINY}")
    local = Path(model_id).expanduser()
    if local.is_dir():
        _no_revision(model_id, revision)
        return local_source(local)
    if _HUB_ID.match(model_id) and not local.exists():
        from trtbuild.fetch import download

        return download(ws, model_id, revision, token=token, progress=progress)
    raise TrtbuildError(f"model {model_id!r} is neither a directory nor a hub id like 'owner/name'; "
                        f"pass a checkpoint directory, a hub id or {BUILTIN_TINY}")


def local_source(path: Path, model_id: str | None = None, revision: str | None = None) -> SourceModel:
    """A directory already on disk (a local checkpoint or a hub snapshot) as a SourceModel."""
    path = Path(path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise TrtbuildError(f"{path} is not a Hugging Face checkpoint (no config.json); "
                            "pass a directory with config.json and *.safetensors")
    if not any(path.glob("*.safetensors")):
        raise TrtbuildError(f"{path} has no *.safetensors weights; convert the checkpoint to safetensors "
                            "(transformers: model.save_pretrained(dir, safe_serialization=True))")
    index = path / "model.safetensors.index.json"
    if index.is_file():  # a sharded checkpoint: every shard must be there (an interrupted download)
        missing = sorted(set(json.loads(index.read_text())["weight_map"].values()) - {p.name for p in path.iterdir()})
        if missing:
            raise TrtbuildError(f"{path} lacks {', '.join(missing)}: the download is incomplete; "
                                "run `trtbuild fetch` again with network (it resumes)")
    return SourceModel(model_id or str(path), revision, path, pipeline_file_hashes(path))


def pipeline_file_hashes(path: Path) -> dict[str, str]:
    """sha256 of each pipeline file in a checkpoint directory, sorted by name.

    In a hub snapshot, weights are symlinks to blobs named by their sha256 (Git LFS): the name is the
    hash, so a 14.5 GB checkpoint is not re-read on every command."""
    hashes = {}
    for file in sorted(Path(path).iterdir()):
        if not any(fnmatch.fnmatch(file.name, pattern) for pattern in PIPELINE_FILES) or not file.is_file():
            continue
        blob = file.resolve().name
        hashes[file.name] = blob if file.is_symlink() and _SHA256.match(blob) else sha256_file(file)
    return hashes


def _no_revision(model_id: str, revision: str | None) -> None:
    if revision:
        raise TrtbuildError(f"--revision {revision} applies to hub models only, not to {model_id}; drop it")
