"""A small local stand-in for the Hugging Face hub's HTTP API, for testing the real huggingface_hub code.

It serves the endpoints huggingface_hub 0.36's snapshot_download calls, with the hub's headers and
error codes:
  GET  /api/models/{repo}/revision/{rev}     model info: sha + siblings (gated repos answer it too)
  HEAD /{repo}/resolve/{rev}/{file}           X-Repo-Commit, ETag (X-Linked-Etag = sha256 for LFS
  GET  /{repo}/resolve/{rev}/{file}           files), Content-Length; GET honours Range (resume)
Errors as the hub sends them: 404 + X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound,
401 (anonymous) or 403 (token without access) + X-Error-Code GatedRepo on a gated repo's files, and
401 + X-Error-Message "Invalid credentials in Authorization header" for an unknown token.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".v3")  # stored in Git LFS on the hub


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = ""  # the commit; derived from the content when empty
    branches: tuple[str, ...] = ("main",)
    gated: bool = False
    allowed_tokens: set[str] = field(default_factory=set)  # tokens whose owners accepted the terms

    def __post_init__(self):
        if not self.sha:
            digest = hashlib.sha1()
            for name in sorted(self.files):
                digest.update(name.encode() + b"\0" + self.files[name])
            self.sha = digest.hexdigest()


class LocalHub:
    """Run with `with LocalHub(repos, tokens) as hub:`; hub.url is the HF_ENDPOINT to use."""

    def __init__(self, repos: dict[str, Repo], valid_tokens: set[str] = frozenset()):
        self.repos = repos
        self.valid_tokens = set(valid_tokens)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header) of each request
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving: later connections are refused, as with no network."""
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def downloaded(self) -> list[str]:
        """File names fetched with GET (not HEAD)."""
        return [path.rsplit("/", 1)[-1] for method, path, _ in self.requests if method == "GET" and "/resolve/" in path]


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    # --- routing ------------------------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append(("HEAD" if head else "GET", path, self.headers.get("Range")))
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        if token is not None and token not in self.hub.valid_tokens:
            return self._error(401, message="Invalid credentials in Authorization header")
        if m := re.fullmatch(r"/api/models/(.+?)/revision/(.+)", path):
            return self._model_info(m[1], m[2], head)
        if m := re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m[1], m[2], m[3], token, head)
        self._error(404, code="EntryNotFound", message="Not found")

    def _find(self, repo_id: str, revision: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, code="RepoNotFound", message="Repository not found")
        elif revision not in (repo.sha, *repo.branches):
            self._error(404, code="RevisionNotFound", message="Invalid rev id: " + revision)
            return None
        return repo

    def _model_info(self, repo_id: str, revision: str, head: bool) -> None:
        repo = self._find(repo_id, revision)
        if repo is None:
            return
        info = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False, "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(repo.files)]}
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)

    def _resolve(self, repo_id: str, revision: str, filename: str, token: str | None, head: bool) -> None:
        repo = self._find(repo_id, revision)
        if repo is None:
            return
        if repo.gated and token not in repo.allowed_tokens:
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self._error(401 if token is None else 403, code="GatedRepo", message=message,
                               commit=repo.sha)
        if filename not in repo.files:
            return self._error(404, code="EntryNotFound", message="Entry not found", commit=repo.sha)
        data = repo.files[filename]
        headers = {"X-Repo-Commit": repo.sha, "Content-Type": "application/octet-stream",
                   "Accept-Ranges": "bytes"}
        if filename.endswith(LFS_SUFFIXES):  # LFS: the etag is the content's sha256 (the cache's blob name)
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
            headers["ETag"] = f'"{hashlib.sha256(data).hexdigest()}"'
        else:  # a regular git file: the etag is its git blob sha1
            git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            headers["ETag"] = f'"{git_sha1}"'
        status, body = 200, data
        if not head and (rng := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")):
            start = int(rng[1])
            end = int(rng[2]) if rng[2] else len(data) - 1
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, body, headers, head)

    # --- responses ----------------------------------------------------------------------------------
    def _error(self, status: int, code: str | None = None, message: str = "", commit: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers, self.command == "HEAD")

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
