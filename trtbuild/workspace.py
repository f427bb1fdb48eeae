"""The workspace: one object that owns every path trtbuild reads or writes.

Layout under the root (`--workspace`, $TRTBUILD_WORKSPACE, default ~/.cache/trtbuild):

    hub/                      huggingface_hub cache (downloads resume from here)
    models/<name>/            checkpoints made locally (the builtin tiny model)
    quantized/<key>/          modelopt FP8 checkpoints, keyed by source + calibration settings
    engines/<variant>-<key>/  engine directories: manifest.json, the engine, validation.json, bench/
    reports/<id>/             generated reports
    exports/                  engine archives (`trtbuild export`) and their .sha256 files
    kernels/                  the torch runtime's C kernel, compiled for this machine (runtime/native.py)
    tmp/                      work in progress; renamed into place only when complete

Every finished artifact appears by a rename from tmp/, so an interrupted build leaves nothing that
looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from trtbuild.errors import TrtbuildError

MANIFEST = "manifest.json"


def default_root() -> Path:
    env = os.environ.get("TRTBUILD_WORKSPACE")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "trtbuild"


class Workspace:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_root()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # --- where things live ------------------------------------------------------------------------
    @property
    def hub_cache(self) -> Path:
        return self.root / "hub"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def engines_dir(self) -> Path:
        return self.root / "engines"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def kernels_dir(self) -> Path:
        """Compiled C kernels (trtbuild.runtime.native): per machine, not per model."""
        return self.root / "kernels"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def model_dir(self, name: str) -> Path:
        return self.models_dir / name

    def quantized_dir(self, key: str) -> Path:
        return self.root / "quantized" / key[:16]

    def engine_dir(self, variant: str, key: str) -> Path:
        return self.engines_dir / f"{variant}-{key[:16]}"

    def bench_dir(self, engine_dir: Path) -> Path:
        return Path(engine_dir) / "bench"

    def report_dir(self, report_id: str) -> Path:
        return self.reports_dir / report_id

    # --- finding engines --------------------------------------------------------------------------
    def engines(self) -> list[Path]:
        """Finished engine directories, newest first."""
        if not self.engines_dir.is_dir():
            return []
        found = [p for p in self.engines_dir.iterdir() if (p / MANIFEST).is_file()]
        return sorted(found, key=_built_at, reverse=True)

    def resolve_engine(self, spec: str | Path) -> Path:
        """An engine directory from a path, or from a variant name ('fp8') or key prefix in the workspace."""
        path = Path(spec).expanduser()
        if path.is_dir():
            if not (path / MANIFEST).is_file():
                raise TrtbuildError(f"{path} is not an engine directory (no {MANIFEST}); build one with `trtbuild compile`")
            return path
        for engine in self.engines():
            variant, _, key = engine.name.rpartition("-")
            if str(spec) in (engine.name, variant) or (len(str(spec)) >= 6 and key.startswith(str(spec))):
                return engine
        raise TrtbuildError(f"no engine {str(spec)!r} in {self.engines_dir}; pass an engine directory or "
                            "a variant you have built (`trtbuild compile --variant ...`)")

    # --- writing atomically -----------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic_dir(self, final: Path) -> Iterator[Path]:
        """Yield an empty temporary directory; on success it becomes `final` by one rename.

        On any exception (Ctrl-C included) the temporary directory is removed and `final` is untouched.
        """
        final = Path(final)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=self.tmp_dir))
        tmp.chmod(0o755)  # mkdtemp makes 0700: a shared workspace must stay readable by its other users
        try:
            yield tmp
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a stale copy (e.g. a forced rebuild): move it aside, then drop it
                trash = self.tmp_dir / f"old-{final.name}-{uuid.uuid4().hex[:8]}"
                final.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def clean_tmp(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _built_at(engine_dir: Path) -> str:
    """When the engine was built (results rewrite the manifest later, so not its mtime)."""
    try:
        return json.loads((engine_dir / MANIFEST).read_text()).get("built_at", "")
    except (OSError, json.JSONDecodeError):
        return ""


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
