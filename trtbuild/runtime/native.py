"""The torch runtime's C kernels, built on first use with the machine's C compiler, called through ctypes:

    kernels = cpu_kernels()   # the library, or None: then torch, oneDNN/MKL and numpy do the same work
    kernels.lm_head_block     # lm_head_kernel.c: the LM head's matmul for a few rows (trtbuild.runtime.lm_head)
    kernels.draw_blocks       # draw_kernel.c: the plain draw's pass over a block of logits (trtbuild.runtime.draw)
    kernels.draw_tokens       #   and its draw across blocks

Why C: the decode step's LM head runs 30-40% faster than oneDNN's at 8 rows, and gives a row the same
logits at any batch size; the draw's pass over a block is five torch ops of a few microseconds of dispatch
each, and its draw across blocks two dozen small numpy calls, each slow on the caches the LM head has just
flushed; in C each is one call (numbers in docs/benchmarks.md, "Ninth pass"). ctypes releases the GIL for a
call, so the LM head's helper threads run these side by side.

The library is built once per (sources, compiler, flags) into the default workspace's kernels/ directory
($TRTBUILD_WORKSPACE or ~/.cache/trtbuild: it depends on the machine, not on a model), written under a
temporary name and renamed, so concurrent processes never load a half-written file. Flags add AVX2 and FMA
only where /proc/cpuinfo shows both, and they are part of the file's name, so a workspace shared between
machines never hands one CPU another's instructions. No compiler, a failed build, or TRTBUILD_NATIVE=0:
None, and one log line says why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = [Path(__file__).with_name(name) for name in ("lm_head_kernel.c", "draw_kernel.c")]
TEMPORARY = "trtbuild-kernel-"  # the prefix of a build directory outside the workspace (read-only workspace)
log = logging.getLogger("trtbuild.runtime")


def compile_flags() -> list[str]:
    """gcc/clang flags: never -march=native, whose code a workspace shared with another CPU could not run."""
    flags = ["-O3", "-std=gnu11", "-shared", "-fPIC"]
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= _cpu_flags():
        flags += ["-mavx2", "-mfma"]
    return flags


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@functools.cache
def cpu_kernels() -> ctypes.CDLL | None:
    """The library, its functions' argument types set (pointers as ints), or None (see the module's
    docstring)."""
    if os.environ.get("TRTBUILD_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    path = None
    try:
        path = build()
        library = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as exc:
        log.warning("the C kernels are not available (%s); the torch runtime uses torch ops", exc)
        return None
    finally:
        if path is not None and path.parent.name.startswith(TEMPORARY):  # loaded (or not): the copy goes
            shutil.rmtree(path.parent, ignore_errors=True)
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    library.lm_head_block.argtypes = [pointer, integer, integer, pointer, integer, pointer, integer]
    library.draw_blocks.argtypes = [pointer, *[integer] * 5, *[pointer] * 3]
    library.draw_tokens.argtypes = [*[integer] * 6, *[pointer] * 4, integer, integer, *[pointer] * 4]
    for function in (library.lm_head_block, library.draw_blocks, library.draw_tokens):
        function.restype = None
    return library


def build(directory: Path | None = None) -> Path:
    """The compiled library's path, compiling it into `directory` (default: the workspace's kernels/) if
    it is not there yet. RuntimeError: no compiler, or the build failed."""
    from trtbuild.workspace import Workspace

    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install gcc)")
    flags = compile_flags()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{cc} --version failed: {exc}") from exc
    named = [*(source.read_text() for source in SOURCES), cc, version, platform.machine(), *flags]
    key = hashlib.sha256("\0".join(named).encode()).hexdigest()[:16]  # gcc --version does not name the CPU
    directory = Path(directory) if directory else Workspace().kernels_dir
    target = directory / f"cpu_kernels-{key}.so"
    if target.is_file():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
        os.close(fd)
    except OSError:  # a read-only workspace: build in a temporary directory (removed once loaded)
        directory = Path(tempfile.mkdtemp(prefix=TEMPORARY))
        target, partial = directory / target.name, str(directory / f".{target.name}")
    try:
        done = subprocess.run([cc, *flags, "-o", partial, *map(str, SOURCES)], capture_output=True, text=True,
                              timeout=120)
        if done.returncode:
            raise RuntimeError(f"{cc} failed: {(done.stderr or done.stdout).strip()[-300:]}")
        os.replace(partial, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{cc} failed: {exc}") from exc
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
