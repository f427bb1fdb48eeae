"""Three `trtbuild serve` replicas behind a real HAProxy, under `trtbuild bench`: kill one, bring it back,
drain another, and compare spreading the load ourselves (repeated --url) with the proxy.

    python bench/haproxy_failover.py [--workspace WS] [--engine fp16] [--seconds 20] [--concurrency 6]
        [--base-port 18710] [--out DIR] [--skip-compare]

Scenario (figures printed as JSON and written to OUT/failover.json):
  1. kill:  a bench run through the proxy; a third into it, with requests in flight on replica1, SIGKILL it.
     Measured: requests the bench counts as failed (and how: a cut stream, a 502), seconds from the kill to
     HAProxy marking the replica DOWN (its own timestamped log), requests HAProxy sent to it after that
     (must be 0), output tokens/s before the kill, between the kill and DOWN, and after. Then replica1 is
     restarted on its port: seconds until HAProxy marks it UP.
  2. drain: a second run, in which the rejoined replica1 serves again; a third in, SIGTERM replica2
     (`--drain-seconds`: readiness 503 while still serving). Measured: failed requests (must be 0), requests
     it completed after SIGTERM, seconds to DOWN and to exit, its exit status, tokens/s before and after.
  3. compare: output tok/s of `trtbuild bench --url r1 --url r2 --url r3` (round-robin) and of the proxy,
     alternating, ROUNDS each; the medians should agree within 10%.
Timelines come from HAProxy's own log (accept time, total time, server, status, termination state per
request), so no clock is shared with the bench process; every success carries exactly --output-len tokens
(ignore_eos), so tokens/s in a window is successes ending in it x output-len / window.
tests/plumbing/test_haproxy.py runs a shorter version (kill, rejoin, drain) in the suite.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from trtbuild.deploy.haproxy import haproxy_config
from trtbuild.server.process import ServerProcess
from trtbuild.workspace import Workspace

INTER_MS, FALL, RISE = 500, 2, 2  # health checks: down after 2 x 0.5 s of failures, up after 2 successes
DRAIN_S = 3.0  # > INTER_MS x FALL + one interval of margin: HAProxy has stopped routing before the listener closes
LOG_FORMAT = "%Ts.%ms %s %ST %tsc %Ta %rc"  # accept time, server, status, termination state, total ms, retries


@dataclass
class LogLine:
    accept: float
    server: str
    status: int
    term: str  # "----": completed normally; "SD"/"SH": the server went away mid-request
    total_ms: int
    retries: str

    @property
    def end(self) -> float:
        return self.accept + max(self.total_ms, 0) / 1e3

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.term.startswith("--")


class HAProxy:
    """haproxy in the foreground, its request log on stdout (captured), stats on a second port."""

    def __init__(self, servers: list[tuple[str, str]], port: int, stats_port: int, workdir: Path):
        self.url, self.stats_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}/stats;csv"
        self.cfg, self.log = workdir / "haproxy.cfg", workdir / "haproxy.log"
        text = haproxy_config(servers, bind=f"127.0.0.1:{port}", inter_ms=INTER_MS, fall=FALL, rise=RISE,
                              stats_bind=f"127.0.0.1:{stats_port}", log_stdout=True)
        text = text.replace("    option httplog\n", f'    log-format "{LOG_FORMAT}"\n')
        # iso: every log line (server DOWN/UP events too) starts with its wall-clock time in microseconds
        self.cfg.write_text(text.replace("format raw", "format iso"))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> HAProxy:
        checked = subprocess.run(["haproxy", "-c", "-q", "-f", str(self.cfg)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy rejects {self.cfg}: {checked.stderr.strip()}")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)], stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.status()
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"haproxy did not start: {self.log.read_text()[-500:]}")

    def status(self) -> dict[str, dict]:
        text = httpx.get(self.stats_url, timeout=2).text.lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == "trtbuild"}

    def wait_status(self, server: str, want: str, timeout: float, since: float = 0.0) -> float:
        """Wait until HAProxy marks server `want` ("DOWN", "UP"); returns when it did, by its own log
        (stats polled every 20 ms to know when to look: the poller's own delays do not count)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.status()[server]["status"].startswith(want):
                events = [t for t, name, state in self.events() if name == server and state == want and t >= since]
                return events[0] if events else time.time()
            time.sleep(0.02)
        raise RuntimeError(f"{server} was not {want} within {timeout:.0f} s")

    def _log_lines(self) -> list[tuple[float, list[str]]]:
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            stamp, _, rest = raw.partition(" ")
            try:
                out.append((datetime.fromisoformat(stamp).timestamp(), rest.split()))
            except ValueError:
                continue  # haproxy's own stderr lines ("[WARNING] ...")
        return out

    def events(self) -> list[tuple[float, str, str]]:
        """(time, server, "DOWN" | "UP") state changes, from "Server trtbuild/NAME is DOWN, reason: ..."."""
        return [(t, p[1].split("/")[1], p[3].rstrip(",")) for t, p in self._log_lines()
                if len(p) > 3 and p[0] == "Server" and p[1].startswith("trtbuild/") and p[2] == "is"]

    def lines(self) -> list[LogLine]:
        return [LogLine(float(p[0]), p[1], int(p[2]), p[3], int(p[4]), p[5]) for _, p in self._log_lines()
                if len(p) == 6 and p[0].replace(".", "").isdigit()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Cluster:
    engine: Path
    workspace: Path
    base_port: int
    workdir: Path
    replicas: dict[str, ServerProcess] = field(default_factory=dict)
    proxy: HAProxy | None = None

    def replica_port(self, i: int) -> int:
        return self.base_port + 1 + i

    def start_replica(self, i: int, wait: bool = True) -> ServerProcess:
        name = f"replica{i}"
        # ServerProcess passes --port 0; a later --port wins (click keeps the last value of an option)
        server = ServerProcess(self.engine, self.workspace, log_path=self.workdir / f"{name}.log",
                               args=["--port", str(self.replica_port(i)), "--drain-seconds", str(DRAIN_S),
                                     "--log-level", "warning"])
        self.replicas[name] = server.start()
        return server.wait_ready() if wait else server

    def __enter__(self) -> Cluster:
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        try:
            for i in (1, 2, 3):
                self.start_replica(i, wait=False)  # all three load at once
            for server in self.replicas.values():
                server.wait_ready()
            servers = [(n, f"127.0.0.1:{self.replica_port(i)}") for i, n in enumerate(self.replicas, 1)]
            self.proxy = HAProxy(servers, self.base_port, self.base_port - 1, self.workdir).start()
            for name in self.replicas:
                self.proxy.wait_status(name, "UP", 30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proxy:
            self.proxy.stop()
        for server in self.replicas.values():
            server.stop()

    @property
    def model(self) -> str:
        return next(iter(self.replicas.values())).model

    def bench(self, urls: list[str], seconds: float, concurrency: int, output_len: int, tag: str) -> dict:
        """`trtbuild bench` in a subprocess (closed loop for `seconds`); its run summary."""
        ws = self.workdir / f"bench-{tag}"
        url_args = [arg for url in urls for arg in ("--url", url)]
        cmd = [sys.executable, "-m", "trtbuild.cli", "--workspace", str(ws), "bench", *url_args,
               "--model", self.model, "--concurrency", str(concurrency), "--duration", str(seconds),
               "--num-requests", str(int(seconds * 100)), "--warmup", "0", "--input-len", "64",
               "--output-len", str(output_len), "--timeout", "60", "--no-progress", "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180)
        if done.returncode != 0:
            raise RuntimeError(f"trtbuild bench failed: {done.stderr.strip()[-800:]}")
        text = done.stdout
        return json.loads(text[: text.rindex("}") + 1])["runs"][0]


def tokens_per_s(lines: list[LogLine], start: float, end: float, output_len: int) -> float | None:
    if end - start < 0.5:  # shorter windows hold too few requests to mean anything
        return None
    done = [line for line in lines if line.ok and start <= line.end < end]
    return round(len(done) * output_len / (end - start), 1)


def in_background(fn, *args) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller after join
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def joined(thread: threading.Thread, box: dict, timeout: float):
    thread.join(timeout)
    if "error" in box:
        raise box["error"]
    return box["result"]


def wait_warm(proxy: HAProxy, since: float, server: str, fraction_s: float, timeout: float = 300) -> int:
    """Wait until the run is under way (its first request completed, then fraction_s more) and `server` has
    requests in flight (so a kill or drain hits some); returns that time. Bench start-up (imports, prompts)
    takes seconds on a busy box, so the run's own progress decides, not a fixed delay. Returns the requests
    in flight on `server` (HAProxy's scur) at that moment."""
    deadline = time.time() + timeout
    while not any(line.ok for line in proxy.lines() if line.accept >= since):
        if time.time() > deadline:
            raise RuntimeError("the bench run completed no request through the proxy")
        time.sleep(0.05)
    first = min(line.end for line in proxy.lines() if line.accept >= since and line.ok)
    time.sleep(max(first + fraction_s - time.time(), 0))
    while (in_flight := int(proxy.status()[server]["scur"])) == 0 and time.time() < deadline:
        time.sleep(0.01)
    return in_flight


def _run_counts(run: dict) -> dict:
    counts = run["counts"]
    return {"requests": counts["requests"], "succeeded": counts["succeeded"], "failed": counts["failed"],
            "failures_by_type": counts["failures_by_type"],
            "output_tokens_per_s": round(run["throughput"].get("output_tokens_per_s") or 0, 1)}


def kill(cluster: Cluster, seconds: float, concurrency: int, output_len: int) -> dict:
    """Run A: SIGKILL replica1 a third into the run; then restart it and wait until HAProxy has it UP."""
    proxy, t_start = cluster.proxy, time.time()
    thread, box = in_background(cluster.bench, [proxy.url], seconds, concurrency, output_len, "kill")
    in_flight = wait_warm(proxy, t_start, "replica1", seconds / 3)
    t_kill = time.time()
    cluster.replicas["replica1"].proc.send_signal(signal.SIGKILL)
    t_down = proxy.wait_status("replica1", "DOWN", 30, since=t_kill)
    run = joined(thread, box, seconds + 300)
    lines = [line for line in proxy.lines() if line.accept >= t_start]
    first, last = min(line.accept for line in lines), max(line.end for line in lines)
    t_restart = time.time()  # after the run, so that "2 replicas, after DOWN" really had two
    cluster.start_replica(1, wait=False)
    t_up = proxy.wait_status("replica1", "UP", 300, since=t_restart)
    return {
        "run": _run_counts(run),
        "in_flight_on_victim_at_kill": in_flight,
        "victim_failures_in_proxy_log": sum(1 for line in lines if line.server == "replica1" and not line.ok),
        "seconds_kill_to_down": round(t_down - t_kill, 3),
        "health_check_bound_s": INTER_MS * FALL / 1e3,
        "sent_to_victim_after_down": sum(1 for line in lines if line.server == "replica1" and line.accept > t_down),
        "redispatched_or_retried": sum(1 for line in lines if line.retries not in ("0", "")),
        "seconds_restart_to_up": round(t_up - t_restart, 3),
        "tokens_per_s": {"3 replicas, before kill": tokens_per_s(lines, first, t_kill, output_len),
                         "kill to DOWN": tokens_per_s(lines, t_kill, t_down, output_len),
                         "2 replicas, after DOWN": tokens_per_s(lines, t_down, last, output_len)},
    }


def drain(cluster: Cluster, seconds: float, concurrency: int, output_len: int) -> dict:
    """Run B: the restarted replica1 serves again (rejoin); SIGTERM replica2 a third in: nothing may fail."""
    proxy, t_start = cluster.proxy, time.time()
    thread, box = in_background(cluster.bench, [proxy.url], seconds, concurrency, output_len, "drain")
    in_flight = wait_warm(proxy, t_start, "replica2", seconds / 3)
    t_term = time.time()
    victim = cluster.replicas["replica2"]
    victim.proc.send_signal(signal.SIGTERM)
    t_down = proxy.wait_status("replica2", "DOWN", 30, since=t_term)
    code = victim.proc.wait(120)
    t_exit = time.time()
    run = joined(thread, box, seconds + 300)
    lines = [line for line in proxy.lines() if line.accept >= t_start]
    first, last = min(line.accept for line in lines), max(line.end for line in lines)
    return {
        "run": _run_counts(run),
        "rejoined_replica1_served": sum(1 for line in lines if line.server == "replica1" and line.ok),
        "in_flight_on_drained_at_sigterm": in_flight,
        "seconds_sigterm_to_down": round(t_down - t_term, 3),
        "seconds_sigterm_to_exit": round(t_exit - t_term, 3),
        "exit_status": code,
        "sent_to_drained_after_down": sum(1 for line in lines if line.server == "replica2" and line.accept > t_down),
        "drained_replica_completed_after_sigterm": sum(1 for line in lines if line.server == "replica2" and line.ok
                                                       and line.end > t_term),
        "drained_replica_failed_in_proxy_log": sum(1 for line in lines if line.server == "replica2" and not line.ok),
        "tokens_per_s": {"3 replicas (replica1 rejoined), before SIGTERM": tokens_per_s(lines, first, t_term,
                                                                                          output_len),
                         "2 replicas, after DOWN": tokens_per_s(lines, t_down, last, output_len)},
    }


def compare(cluster: Cluster, seconds: float, concurrency: int, output_len: int, rounds: int) -> dict:
    direct = [s.url for s in cluster.replicas.values()]
    tps: dict[str, list[float]] = {"direct (repeated --url)": [], "through haproxy": []}
    for r in range(rounds):  # alternate, so a burst of load from elsewhere hits both sides alike
        for label, urls in (("direct (repeated --url)", direct), ("through haproxy", [cluster.proxy.url])):
            run = cluster.bench(urls, seconds, concurrency, output_len, f"cmp-{r}-{label[:6]}")
            assert run["counts"]["failed"] == 0, run["counts"]
            tps[label].append(run["throughput"]["output_tokens_per_s"])
    medians = {k: statistics.median(v) for k, v in tps.items()}
    a, b = medians.values()
    return {"rounds": tps, "median": medians, "proxy_over_direct": round(b / a, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", default=os.environ.get("TRTBUILD_WORKSPACE"))
    parser.add_argument("--engine", default="fp16")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--base-port", type=int, default=18710)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    ws = Workspace(args.workspace)
    engine = ws.resolve_engine(args.engine)
    out = Path(args.out or tempfile.mkdtemp(prefix="haproxy-failover-"))
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    with Cluster(engine, ws.root, args.base_port, out) as cluster:
        results = {"load_average_at_start": [round(x, 2) for x in load], "cpus": os.cpu_count(),
                   "concurrency": args.concurrency, "output_len": args.output_len, "seconds": args.seconds,
                   "kill_and_rejoin": kill(cluster, args.seconds, args.concurrency, args.output_len),
                   "drain_and_rejoined": drain(cluster, args.seconds, args.concurrency, args.output_len)}
        cluster.start_replica(2)  # back to three for the comparison
        cluster.proxy.wait_status("replica2", "UP", 60)
        if not args.skip_compare:
            results["compare"] = compare(cluster, args.seconds / 2, args.concurrency, args.output_len, args.rounds)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "failover.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(out / "failover.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
