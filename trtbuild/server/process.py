"""`trtbuild serve` in a subprocess, for tests, benchmarks and scripts that need a real server.

    with ServerProcess(engine_dir, workspace=ws.root, args=["--api-key", "k"]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k")

It binds port 0 (a free port, no race), reads the URL the command prints, and waits for /health 200.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx

from trtbuild.errors import TrtbuildError


class ServerProcess:
    def __init__(self, engine: str | Path, workspace: str | Path | None = None, args: Sequence[str] = (),
                 log_path: str | Path | None = None, env: dict | None = None, cpus: set[int] | None = None):
        self.engine, self.workspace, self.args = str(engine), workspace, list(args)
        self.cpus = cpus  # pin the server (and every thread it starts) to these CPUs: benchmarks on small boxes
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def base_url(self) -> str:
        return self.info["openai_base_url"]

    @property
    def model(self) -> str:
        return self.info["model"]

    def start(self, timeout: float = 180.0) -> ServerProcess:
        """Launch the server (the socket opens at once) without waiting for the engine to load."""
        cmd = [sys.executable, "-m", "trtbuild.cli"]
        if self.workspace is not None:
            cmd += ["--workspace", str(self.workspace)]
        cmd += ["serve", self.engine, "--port", "0", "--json", *self.args]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        pin = (lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, preexec_fn=pin)
        if log is not subprocess.DEVNULL:
            log.close()
        text = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the command prints one JSON document describing the server
            line = self.proc.stdout.readline().decode()
            if not line:
                raise TrtbuildError(f"trtbuild serve exited ({self.proc.wait()}) before listening: {self.log_tail()}")
            text += line
            try:
                self.info = json.loads(text)
                return self
            except json.JSONDecodeError:
                continue
        raise TrtbuildError(f"trtbuild serve printed no address within {timeout:.0f} s")

    def wait_ready(self, timeout: float = 180.0) -> ServerProcess:
        """Poll /health until 200; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TrtbuildError(f"trtbuild serve exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TrtbuildError(f"the server was not healthy within {timeout:.0f} s: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown), SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_tail(self, lines: int = 5) -> str:
        if not self.log_path or not self.log_path.is_file():
            return "(no log)"
        return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
