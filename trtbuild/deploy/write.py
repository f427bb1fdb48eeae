"""Write a generated tree (deploy output) so that readers see the old tree or the new one, never half."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import yaml

from trtbuild.errors import TrtbuildError


def to_yaml(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)


def render_file(name: str, content) -> str:
    if isinstance(content, str):
        return content
    if name.endswith(".json"):
        return json.dumps(content, indent=2) + "\n"
    return to_yaml(content)


MARKER = ".trtbuild-deploy.json"  # says a directory is ours to replace


def write_tree(out_dir: str | Path, files: dict[str, object]) -> Path:
    """files: relative path -> str, or a dict written as YAML (.yaml) or JSON (.json). Replaces out_dir whole,
    if it is empty or was written by this function (it holds MARKER): never a directory of the user's."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MARKER).is_file())):
        raise TrtbuildError(f"{out_dir} exists and was not written by `trtbuild deploy`; pass a new --out "
                            "directory (it is replaced whole on every run)")
    files = {**files, MARKER: files.get(MARKER, {})}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render_file(rel, content))
        tmp.chmod(0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
