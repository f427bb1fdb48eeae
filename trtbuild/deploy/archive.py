"""Engine archives: how an engine travels to the machines that serve it.

    export_engine(ws, engine_dir)         -> <workspace>/exports/<engine>.tar + <engine>.tar.sha256
    import_engine(ws, "URL or path.tar")  -> <workspace>/engines/<engine>/, verified

The archive is a plain tar (safetensors and TensorRT engines barely compress) holding one directory, the
engine's, made reproducibly (sorted names, zero mtimes and owners) so the same engine always gives the same
checksum. The checksum file is `sha256sum` format, so `sha256sum -c` checks it too. Import refuses an
archive whose checksum, member names or engine manifest (trtbuild.manifest.verify_engine: every artifact's
sha256) do not match, and unpacks into tmp/ first, renaming into engines/ only once all of that passed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from trtbuild.errors import TrtbuildError
from trtbuild.manifest import RESULT_DIRS, load_manifest, sha256_file, verify_engine
from trtbuild.workspace import MANIFEST, Workspace, atomic_write_text

CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def archive_name(engine_dir: Path) -> str:
    return f"{Path(engine_dir).name}.tar"


def export_engine(ws: Workspace, engine_dir: str | Path, out_dir: str | Path | None = None,
                  progress: bool = False) -> tuple[Path, str]:
    """Write ENGINE.tar and ENGINE.tar.sha256 (atomically); returns (archive path, sha256)."""
    engine_dir = Path(engine_dir)
    verify_engine(engine_dir)  # never ship an engine that is already broken here
    out_dir = Path(out_dir) if out_dir else ws.exports_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / archive_name(engine_dir)
    files = sorted(p for p in engine_dir.rglob("*")
                   if p.is_file() and p.relative_to(engine_dir).parts[0] not in RESULT_DIRS)
    total = sum(p.stat().st_size for p in files)
    tmp = out_dir / f".{final.name}.{os.getpid()}.part"
    try:
        with open(tmp, "wb") as raw, tqdm(total=total, unit="B", unit_scale=True, desc=f"export {engine_dir.name}",
                                          disable=not progress, leave=False) as bar:
            writer = _HashingWriter(raw)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in files:
                    rel = PurePosixPath(engine_dir.name, path.relative_to(engine_dir).as_posix())
                    info = tarfile.TarInfo(str(rel))
                    info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                    bar.update(info.size)
        digest = writer.hexdigest()
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(checksum_path(final), f"{digest}  {final.name}\n")
    return final, digest


def checksum_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sha256")


def import_engine(ws: Workspace, source: str, sha256: str | None = None, force: bool = False,
                  progress: bool = False) -> Path:
    """Fetch (http/https URL) or read an engine archive, check it, unpack it into the workspace's engines."""
    if sha256 is not None and not _HEX64.fullmatch(sha256.lower()):
        raise TrtbuildError(f"--sha256 must be 64 hex digits, got {sha256[:80]!r}")
    ws.tmp_dir.mkdir(parents=True, exist_ok=True)
    downloaded = None
    try:
        if re.match(r"https?://", source):
            expected = sha256.lower() if sha256 else _read_remote_checksum(source + ".sha256")
            archive = downloaded = _download(source, ws.tmp_dir, progress)
        else:
            archive = Path(source).expanduser()
            if not archive.is_file():
                raise TrtbuildError(f"no archive at {archive}; pass a file made by `trtbuild export` or an http(s) URL")
            expected = sha256.lower() if sha256 else _read_local_checksum(archive)
        actual = sha256_file(archive)
        if actual != expected:
            raise TrtbuildError(f"{source}: sha256 {actual[:16]}... does not match the expected {expected[:16]}...; "
                                "the archive is corrupt or not the one exported: download or export it again")
        return _unpack(ws, archive, source, force)
    finally:
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)


def _unpack(ws: Workspace, archive: Path, source: str, force: bool) -> Path:
    try:
        tar = tarfile.open(archive, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise TrtbuildError(f"{source} is not an engine archive (not a tar file: {exc}); make one with "
                            "`trtbuild export ENGINE`") from None
    with tar:
        members = tar.getmembers()
        name = _check_members(members, source)
        final = ws.engines_dir / name
        if final.is_dir() and (final / MANIFEST).is_file() and not force:
            try:
                verify_engine(final)
            except TrtbuildError as exc:
                raise TrtbuildError(f"{exc} (or replace it: `trtbuild import ... --force`)") from None
            return final  # already here and intact: importing twice is a no-op
        with ws.atomic_dir(final) as tmp:
            tar.extractall(tmp, members=members, filter="data")  # "data": no links, devices or escaping paths
            unpacked = tmp / name
            try:
                manifest = verify_engine(unpacked, check_hashes=True)
            except TrtbuildError as exc:
                raise TrtbuildError(f"{source}: the engine inside failed its manifest check: {exc}") from None
            if name != f"{manifest.variant}-{manifest.key[:16]}":
                raise TrtbuildError(f"{source}: directory {name!r} does not match its manifest "
                                    f"({manifest.variant}-{manifest.key[:16]}); re-export the engine")
            for child in unpacked.iterdir():  # the atomic directory becomes the engine directory itself
                child.rename(tmp / child.name)
            unpacked.rmdir()
    load_manifest(final)
    return final


def _check_members(members: list[tarfile.TarInfo], source: str) -> str:
    """The one engine directory the archive holds; refuse anything but plain files under it."""
    if not members:
        raise TrtbuildError(f"{source} is an empty archive; make one with `trtbuild export ENGINE`")
    tops = set()
    for m in members:
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts or not (m.isfile() or m.isdir()):
            raise TrtbuildError(f"{source}: refusing member {m.name[:200]!r} (absolute, '..', link or device); "
                                "only archives made by `trtbuild export` are accepted")
        tops.add(path.parts[0])
    if len(tops) != 1:
        raise TrtbuildError(f"{source} holds {len(tops)} top-level entries, an engine archive holds one directory")
    name = tops.pop()
    if not any(PurePosixPath(m.name) == PurePosixPath(name, MANIFEST) for m in members):
        raise TrtbuildError(f"{source} has no {name}/{MANIFEST}: not an engine archive; make one with "
                            "`trtbuild export ENGINE`")
    return name


def _read_local_checksum(archive: Path) -> str:
    path = checksum_path(archive)
    if not path.is_file():
        raise TrtbuildError(f"no checksum file {path.name} next to {archive}; pass --sha256 HEX or copy the "
                            ".sha256 file `trtbuild export` wrote")
    return _parse_checksum(path.read_text(errors="replace"), str(path))


def _parse_checksum(text: str, where: str) -> str:
    field = text.strip().split()[0].lower() if text.strip() else ""
    if not _HEX64.fullmatch(field):
        raise TrtbuildError(f"{where} is not a sha256 checksum file (`<64 hex digits>  <name>`)")
    return field


def _read_remote_checksum(url: str) -> str:
    import httpx

    try:
        resp = httpx.get(url, timeout=30, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise TrtbuildError(f"cannot fetch {url}: {type(exc).__name__}: {exc}; pass --sha256 HEX instead") from None
    if resp.status_code != 200:
        raise TrtbuildError(f"cannot fetch {url}: HTTP {resp.status_code}; pass --sha256 HEX instead")
    return _parse_checksum(resp.text[:1000], url)


def _download(url: str, tmp_dir: Path, progress: bool) -> Path:
    import httpx

    target = tmp_dir / f"download-{os.getpid()}.tar"
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(30, read=300), follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise TrtbuildError(f"cannot fetch {url}: HTTP {resp.status_code}")
            size = int(resp.headers.get("content-length") or 0) or None
            with open(target, "wb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="download",
                                               disable=not progress, leave=False) as bar:
                for block in resp.iter_bytes(CHUNK):
                    f.write(block)
                    bar.update(len(block))
    except httpx.HTTPError as exc:
        target.unlink(missing_ok=True)
        raise TrtbuildError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through: the checksum costs no second read."""

    def __init__(self, raw):
        self.raw, self.digest = raw, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()
