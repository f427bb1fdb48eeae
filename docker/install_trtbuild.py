"""Install trtbuild into an image that already holds its heavy dependencies, changing none of them.

NVIDIA's TensorRT-LLM release image ships torch, tensorrt_llm, tensorrt, transformers, nvidia-modelopt and
MPI, built to work together. A plain `pip install .` would break that: NGC's torch builds carry pre-release
versions (2.9.0a0+<commit>.nv<yy.mm>), which do not satisfy `torch>=2.9`, so pip would pull another torch
from PyPI over the image's. So: trtbuild with --no-deps, then only the requirements the image lacks, under
a constraints file pinning every installed distribution; then check that nothing changed.

    python3 docker/install_trtbuild.py /opt/trtbuild
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def missing_requirements(requires: list[str], present: dict[str, str]) -> list[str]:
    """trtbuild's requirements (no extras) whose distribution is not installed at any version: an installed
    one is the image's choice and stays (`trtbuild doctor` reports the versions that matter)."""
    out = []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra (dev, tensorrt-llm) or another platform
        if canonicalize_name(req.name) not in present:
            out.append(str(req))
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(f"{name} {version} -> {after.get(name, 'removed')}" for name, version in before.items()
                  if after.get(name) != version)


def main(src: str) -> int:
    pip = [sys.executable, "-m", "pip", "install", "--no-cache-dir"]
    before = installed()
    subprocess.run([*pip, "--no-deps", src], check=True)
    todo = missing_requirements(metadata.requires("trtbuild") or [], before)
    if todo:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:
            pins.write("".join(f"{name}=={version}\n" for name, version in sorted(before.items())))
        print("installing what the image lacks:", " ".join(todo), flush=True)
        subprocess.run([*pip, "--constraint", pins.name, *todo], check=True)
    diff = changed(before, installed())
    if diff:
        print("error: installing trtbuild changed the image's packages: " + "; ".join(diff), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
