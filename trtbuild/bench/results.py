"""Benchmark results on disk: summary.json (one per run) and requests.jsonl (one line per request).

Both carry SCHEMA_VERSION; load_run refuses another version with a one-line error. Runs are written
through Workspace.atomic_dir, so a run directory either holds both files or does not exist.
Where they go: offline runs under <engine>/bench/<run-id>/ (ws.bench_dir), online runs under
<workspace>/bench/<run-id>/, or next to the engine when the served model is a workspace engine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from trtbuild import __version__
from trtbuild.errors import TrtbuildError
from trtbuild.workspace import Workspace

SCHEMA_VERSION = 1
SUMMARY, REQUESTS = "summary.json", "requests.jsonl"


@dataclass
class RequestRecord:
    """One request as the client saw it. Times: ns relative to the run's start, on perf_counter (offline,
    like the engine's own stamps) or monotonic_ns (online: one clock across client worker processes)."""

    index: int
    warmup: bool = False
    target: str = ""  # engine name, or the URL of the replica that served it
    scheduled_ns: int = 0  # when the load generator meant to send it
    sent_ns: int = 0
    first_byte_ns: int | None = None  # first response byte (online), submit returned (offline)
    chunk_ns: list[int] = field(default_factory=list)  # arrival of each content-bearing chunk
    chunk_tokens: list[int] | None = None  # tokens in each chunk, where known
    end_ns: int = 0  # stream closed (after the usage chunk and [DONE])
    input_tokens: int = 0  # prompt tokens as built by the workload (BOS included)
    requested_output_tokens: int = 0
    output_tokens: int | None = None  # the count used for metrics (see token_source)
    token_source: str = ""  # engine | usage | client
    token_counts: dict = field(default_factory=dict)  # engine / usage / client output counts
    prompt_tokens_usage: int | None = None  # the server's prompt count, checked against input_tokens
    finish_reason: str | None = None
    queue_ns: int | None = None  # offline only: scheduled - arrival inside the engine
    error_type: str | None = None  # None = success; else http_4xx, timeout, connection, ...
    error: str | None = None
    flags: list[str] = field(default_factory=list)  # length_mismatch, token_count_mismatch, ...
    trial: int = 0  # which repetition of the load level (trtbuild bench --trials); times are per trial

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RequestRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RunSummary:
    run_id: str
    mode: str  # offline | online
    tool_version: str
    created_at: str
    seed: int
    workload: dict
    load: dict
    target: dict  # offline: engine name/dir/variant/backend/manifest; online: urls, model, server info
    system: dict
    versions: dict
    counts: dict
    duration_s: float
    throughput: dict
    latency_ms: dict
    token_counts: dict  # sources used, mismatches, client re-tokenization cross-check
    slo: dict | None
    client: dict  # health of the load generator: send lag, loop lag, CPU, thresholds
    validity: dict  # {"valid": bool, "reasons": [...]}
    unavailable: list[str] = field(default_factory=list)
    # Repeated trials (trtbuild/bench/trials.py). Summaries written before them load with these defaults:
    # no trials list = one trial, intervals and sample checks are then computed from the records.
    trials: list[dict] = field(default_factory=list)  # per trial: run id, counts, metrics, validity, environment
    intervals: dict = field(default_factory=dict)  # metric key -> Interval.to_dict() over the trials
    sample_check: dict | None = None  # {"ok", "flags"}: too few samples for a percentile, too short a window
    environment: dict | None = None  # the machine during the run (trtbuild/bench/environment.py)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def engine_name(self) -> str:
        return self.target.get("name") or self.target.get("model") or "?"

    @property
    def load_label(self) -> str:
        return load_label(self.load)

    @property
    def num_trials(self) -> int:
        return max(len(self.trials), 1)


def load_label(load: dict) -> str:
    if load.get("request_rate") is not None:
        return f"rate {load['request_rate']:g}/s ({load.get('arrival', 'poisson')})"
    return f"concurrency {load.get('concurrency')}"


@dataclass
class BenchResult:
    summary: RunSummary
    records: list[RequestRecord]
    path: Path | None = None  # the run directory once saved

    @property
    def valid(self) -> bool:
        return bool(self.summary.validity.get("valid"))


def new_run_id(load: dict) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    level = f"r{load['request_rate']:g}" if load.get("request_rate") is not None else f"c{load.get('concurrency')}"
    return f"{stamp}-{level}-{uuid.uuid4().hex[:6]}"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def system_info() -> dict:
    from trtbuild.manifest import gpu_info

    gpu = gpu_info()
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "gpu": gpu, "num_gpus": _gpu_count() if gpu else 0}


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def versions() -> dict:
    from importlib import metadata

    from trtbuild.manifest import library_versions

    out = dict(library_versions())
    for dist in ("numpy", "aiohttp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["trtbuild"] = __version__
    return out


def save_run(ws: Workspace, run_dir: Path, result: BenchResult) -> Path:
    """Write summary.json + requests.jsonl into run_dir atomically; returns run_dir."""
    with ws.atomic_dir(Path(run_dir)) as tmp:
        lines = "".join(json.dumps(r.to_dict(), separators=(",", ":")) + "\n" for r in result.records)
        (tmp / REQUESTS).write_text(lines)
        (tmp / SUMMARY).write_text(json.dumps(result.summary.to_dict(), indent=2, sort_keys=True) + "\n")
    result.path = Path(run_dir)
    return result.path


def load_run(path: str | Path) -> BenchResult:
    """A run directory (or its summary.json) -> BenchResult."""
    path = Path(path)
    run_dir = path.parent if path.name == SUMMARY else path
    summary_path = run_dir / SUMMARY
    if not summary_path.is_file():
        raise TrtbuildError(f"{run_dir} is not a benchmark run (no {SUMMARY}); run `trtbuild bench` first")
    try:
        data = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        raise TrtbuildError(f"{summary_path} is not valid JSON; rerun the benchmark") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise TrtbuildError(f"{summary_path} has schema {data.get('schema_version')}, this trtbuild reads "
                            f"{SCHEMA_VERSION}; rerun the benchmark with this version")
    records = []
    requests_path = run_dir / REQUESTS
    if requests_path.is_file():
        with open(requests_path) as f:
            records = [RequestRecord.from_dict(json.loads(line)) for line in f if line.strip()]
    return BenchResult(RunSummary.from_dict(data), records, run_dir)


def find_runs(directory: Path) -> list[Path]:
    """Run directories under a bench directory, oldest first."""
    if not directory.is_dir():
        return []
    runs = [p for p in directory.iterdir() if (p / SUMMARY).is_file()]
    return sorted(runs, key=lambda p: p.name)
