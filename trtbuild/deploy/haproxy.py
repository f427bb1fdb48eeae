"""HAProxy in front of N `trtbuild serve` replicas: least-connections balancing, health checks on NIM's
readiness route, failed connects retried on another replica.

    haproxy_config([("r1", "127.0.0.1:8001"), ("r2", "127.0.0.1:8002")], bind="0.0.0.0:8000")

Why these settings:
  - leastconn: a request holds its connection for the whole generation (seconds, streamed), so the replica
    with the fewest open requests is the least loaded; round-robin would pile long requests on one.
  - httpchk GET /v1/health/ready every `inter`, down after `fall` failures: a killed replica (connection
    refused) or a draining one (`trtbuild serve --drain-seconds`: 503) leaves rotation within inter x fall;
    no on-marked-down session kill, so requests in flight on a draining replica finish.
  - retries + redispatch, on conn-failure and empty-response: a request that reached a replica as it died,
    and got no byte back, is sent to another one (a generation changes nothing server-side, so replaying
    it is safe). A request whose answer had started streaming fails (a cut stream): HAProxy cannot replay
    half a response, and the client sees an incomplete stream, never a wrong one.
  - timeout check 2 s, apart from inter: a replica busy generating can answer its health check late; a
    timeout of one interval made busy replicas flap DOWN under load (bench/haproxy_failover.py, 2 cores).
  - long client/server timeouts: a stream may stay quiet while a long prompt is prefilled.
"""

from __future__ import annotations

from typing import Sequence


def haproxy_config(servers: Sequence[tuple[str, str]], bind: str = "0.0.0.0:8000", inter_ms: int = 1000,
                   fall: int = 2, rise: int = 2, stats_bind: str | None = None, log_stdout: bool = False,
                   timeout_s: int = 600, maxconn: int = 4096, check_timeout_ms: int = 2000) -> str:
    """An haproxy.cfg (HAProxy 2.4+) balancing over `servers`: [(name, "host:port"), ...]."""
    lines = ["global", f"    maxconn {maxconn}"]
    if log_stdout:
        lines.append("    log stdout format raw local0")
    lines += [
        "",
        "defaults",
        "    mode http",
        *(["    log global", "    option httplog"] if log_stdout else []),
        "    timeout connect 2s",
        "    timeout http-request 30s",
        f"    timeout client {timeout_s}s",
        f"    timeout server {timeout_s}s",
        f"    timeout check {check_timeout_ms}ms",
        "    retries 3",
        "    retry-on conn-failure empty-response",
        "    option redispatch 1",
        "",
        "frontend openai",
        f"    bind {bind}",
        "    default_backend trtbuild",
        "",
        "backend trtbuild",
        "    balance leastconn",
        "    option httpchk GET /v1/health/ready",
        "    http-check expect status 200",
        f"    default-server check inter {inter_ms}ms fall {fall} rise {rise}",
    ]
    lines += [f"    server {name} {address}" for name, address in servers]
    if stats_bind:
        lines += ["", "frontend stats", f"    bind {stats_bind}", "    stats enable", "    stats uri /stats",
                  "    http-request set-log-level silent"]
    return "\n".join(lines) + "\n"
