"""Helpers for the server tests: SSE bodies, Prometheus text, and waiting for a server to go idle."""

from __future__ import annotations

import json
import re
import time

import httpx

ABORT = '{finished_reason="abort"}'


def sse_data(text: str) -> list:
    """The data of each SSE event in a response body, JSON-decoded ("[DONE]" kept as the string)."""
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in text.split("\n\n") if line.startswith("data: ")]


def sse_lines(lines) -> list:
    """The same, from an iterator of lines (a response being streamed)."""
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of /metrics; a labelled counter not seen yet counts 0."""
    match = re.search(rf"^trtbuild:{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert match or labels, f"{name} not in /metrics"
    return float(match.group(1)) if match else 0.0


def wait_idle(url: str, timeout: float = 10) -> str:
    """/metrics once nothing is admitted, running or waiting (or when the deadline passed)."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"{url}/metrics").text
        busy = [metric(text, n) for n in ("num_requests_running", "num_requests_waiting", "num_requests_admitted")]
        if not any(busy) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)
