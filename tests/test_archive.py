"""`trtbuild export` / `trtbuild import`: engine archives with a checksum, verified against the engine manifest
on import, unpacked atomically; every bad archive is a one-line error that leaves nothing behind."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
from helpers import trtbuild

from trtbuild.manifest import hash_tree, verify_engine
from trtbuild.workspace import Workspace


@pytest.fixture(scope="module")
def exported(workspace, engine_dirs, tmp_path_factory):
    """The fp16 engine exported to a directory of its own (the shared workspace stays as it is)."""
    from trtbuild.deploy.archive import export_engine

    out = tmp_path_factory.mktemp("exports")
    archive, digest = export_engine(workspace, engine_dirs["fp16"], out)
    return archive, digest


def _fresh(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def _leftovers(ws: Workspace) -> list[str]:
    """Anything an import left in engines/ or tmp/ (must be nothing after a refusal)."""
    return [str(p) for d in (ws.engines_dir, ws.tmp_dir) if d.is_dir() for p in d.iterdir()]


def test_export_is_reproducible_and_sha256sum_compatible(workspace, engine_dirs, exported, tmp_path):
    archive, digest = exported
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == digest
    assert (archive.parent / f"{archive.name}.sha256").read_text() == f"{digest}  {archive.name}\n"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert all(n.startswith(engine_dirs["fp16"].name + "/") for n in names)
    assert f"{engine_dirs['fp16'].name}/manifest.json" in names and not any("/bench/" in n for n in names)
    from trtbuild.deploy.archive import export_engine

    again, digest2 = export_engine(workspace, engine_dirs["fp16"], tmp_path)
    assert digest2 == digest  # same engine, same bytes: a checksum can be pinned in manifests


def test_cli_round_trip_into_a_fresh_workspace(capsys, engine_dirs, exported, tmp_path):
    archive, digest = exported
    ws = _fresh(tmp_path)
    code, out, err = trtbuild(capsys, ws, "import", str(archive), "--json")
    assert code == 0, err
    engine_dir = Path(json.loads(out[: out.rindex("}") + 1])["engine_dir"])
    assert engine_dir == ws.engines_dir / engine_dirs["fp16"].name
    assert hash_tree(engine_dir) == hash_tree(engine_dirs["fp16"], skip=("bench",))
    verify_engine(engine_dir, check_hashes=True)
    assert ws.resolve_engine("fp16") == engine_dir  # servable by variant name
    code, _, err = trtbuild(capsys, ws, "import", str(archive))  # importing again: a no-op
    assert code == 0, err
    assert not list(ws.tmp_dir.iterdir())


def _rewrite(archive: Path, dest: Path, edit) -> Path:
    """A copy of archive with edit(name, bytes) -> bytes | None (None drops) per member, and its .sha256."""
    with tarfile.open(archive) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            data = edit(member.name, src.extractfile(member).read())
            if data is None:
                continue
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    Path(f"{dest}.sha256").write_text(f"{digest}  {dest.name}\n")
    return dest


def _flip_weights(name: str, data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1]) if name.endswith(".safetensors") else data


def _add_member(archive: Path, dest: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    shutil.copy(archive, dest)
    with tarfile.open(dest, "a") as tar:
        tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    Path(f"{dest}.sha256").write_text(f"{digest}  {dest.name}\n")
    return dest


def _symlink(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _escaping(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


@pytest.mark.parametrize("case, expected", [
    ("checksum mismatch", "does not match the expected"),
    ("tampered weights, checksum redone", "failed its manifest check"),
    ("manifest missing", "no fp16-"),
    ("symlink member", "refusing member"),
    ("member escaping with ..", "refusing member"),
    ("not a tar", "not an engine archive"),
    ("no checksum file", "no checksum file"),
    ("bad --sha256", "64 hex digits"),
])
def test_bad_archives_are_one_line_errors_leaving_nothing(capsys, engine_dirs, exported, tmp_path, case, expected):
    archive, digest = exported
    name = engine_dirs["fp16"].name
    bad = tmp_path / "bad.tar"
    args: list[str] = []
    if case == "checksum mismatch":
        shutil.copy(archive, bad)
        Path(f"{bad}.sha256").write_text(f"{'0' * 64}  bad.tar\n")
    elif case == "tampered weights, checksum redone":
        _rewrite(archive, bad, _flip_weights)
    elif case == "manifest missing":
        _rewrite(archive, bad, lambda n, d: None if n.endswith("manifest.json") else d)
    elif case == "symlink member":
        _add_member(archive, bad, _symlink(f"{name}/model/evil"))
    elif case == "member escaping with ..":
        _add_member(archive, bad, _escaping(f"{name}/../../escaped"), b"x")
    elif case == "not a tar":
        bad.write_bytes(b"this is not a tar file\n" * 100)
        Path(f"{bad}.sha256").write_text(f"{hashlib.sha256(bad.read_bytes()).hexdigest()}  bad.tar\n")
    elif case == "no checksum file":
        shutil.copy(archive, bad)
    elif case == "bad --sha256":
        shutil.copy(archive, bad)
        args = ["--sha256", "xyz"]
    ws = _fresh(tmp_path)
    code, out, err = trtbuild(capsys, ws, "import", str(bad), *args)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err
    assert _leftovers(ws) == []
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A real HTTP server on a free port serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_import_by_url_reads_the_checksum_next_to_it(capsys, engine_dirs, exported, http_dir, tmp_path):
    archive, digest = exported
    root, url = http_dir
    shutil.copy(archive, root / archive.name)
    shutil.copy(f"{archive}.sha256", root / f"{archive.name}.sha256")
    ws = _fresh(tmp_path)
    code, out, err = trtbuild(capsys, ws, "import", f"{url}/{archive.name}")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(ws.engines_dir / engine_dirs["fp16"].name)
    assert _leftovers(Workspace(ws.root)) == [str(ws.engines_dir / engine_dirs["fp16"].name)]  # no download left


def test_import_by_url_with_a_pinned_sha256_refuses_another_archive(capsys, exported, http_dir, tmp_path):
    archive, digest = exported
    root, url = http_dir
    _rewrite(archive, root / archive.name, _flip_weights)  # the server's own .sha256 matches the tampered file
    ws = _fresh(tmp_path)
    code, _, err = trtbuild(capsys, ws, "import", f"{url}/{archive.name}", "--sha256", digest)
    assert code == 1 and "does not match the expected" in err
    assert _leftovers(ws) == []
    code, _, err = trtbuild(capsys, ws, "import", f"{url}/missing.tar")
    assert code == 1 and "HTTP 404" in err and len(err.strip().splitlines()) == 1
