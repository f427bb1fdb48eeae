"""`trtbuild serve ENGINE`: the OpenAI-compatible server (trtbuild.server) under uvicorn."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

import click
import uvicorn  # light; this module is imported only when `serve` runs

from trtbuild.cli import emit
from trtbuild.commands import json_option

DEFAULT_BODY_BYTES = 2 * 1024 * 1024


@click.command("serve")
@click.argument("engine")
@click.option("--host", envvar="TRTBUILD_HOST", show_envvar=True, default="127.0.0.1", show_default=True,
              help="Address to bind. The default answers this machine only; 0.0.0.0 exposes the server.")
@click.option("--port", envvar="TRTBUILD_PORT", show_envvar=True, type=click.IntRange(0, 65535), default=8000,
              show_default=True, help="Port to bind (0: any free port, printed at startup).")
@click.option("--api-key", envvar="TRTBUILD_API_KEY", show_envvar=True, default=None,
              help="Require `Authorization: Bearer KEY` on /v1/*, /tokenize and /detokenize.")
@click.option("--served-model-name", envvar="TRTBUILD_SERVED_MODEL_NAME", default=None,
              help="The model id clients send. Default: the engine's name.")
@click.option("--max-queue", envvar="TRTBUILD_MAX_QUEUE", type=click.IntRange(min=0), default=256,
              show_default=True, help="Sequences admitted beyond the engine's max batch size; "
                                      "requests past that get 429 with Retry-After.")
@click.option("--max-body-bytes", envvar="TRTBUILD_MAX_BODY_BYTES", type=click.IntRange(min=1024),
              default=DEFAULT_BODY_BYTES, show_default=True, help="Larger request bodies get 413.")
@click.option("--max-header-bytes", envvar="TRTBUILD_MAX_HEADER_BYTES", type=click.IntRange(min=1024),
              default=32 * 1024, show_default=True,
              help="Cap on a request's line + headers (nginx: 4 x 8 KB); larger heads get 431.")
@click.option("--header-timeout", envvar="TRTBUILD_HEADER_TIMEOUT", type=click.FloatRange(min=0.1), default=60.0,
              show_default=True, help="Seconds a client has to send a request's headers (and between two pieces "
                                      "of its body) before 408 and a close (nginx: client_header_timeout).")
@click.option("--keep-alive-timeout", envvar="TRTBUILD_KEEP_ALIVE_TIMEOUT", type=click.FloatRange(min=0.1),
              default=5.0, show_default=True, help="Idle keep-alive connections are closed after this many "
                                                   "seconds (behind a load balancer: more than its idle timeout).")
@click.option("--write-timeout", envvar="TRTBUILD_WRITE_TIMEOUT", type=click.FloatRange(min=0.1), default=60.0,
              show_default=True, help="A response the client does not read for this many seconds is dropped "
                                      "(counted in /metrics; nginx: send_timeout).")
@click.option("--max-connections", envvar="TRTBUILD_MAX_CONNECTIONS", type=click.IntRange(min=1), default=1024,
              show_default=True, help="Open connections past this get 503 too_many_connections and are closed.")
@click.option("--send-buffer-bytes", envvar="TRTBUILD_SEND_BUFFER_BYTES", type=click.IntRange(min=0),
              default=256 * 1024, show_default=True, help="Kernel send buffer per connection: what a client "
              "that stops reading can pin (0: the OS's autotuning, up to net.ipv4.tcp_wmem's maximum).")
@click.option("--shutdown-timeout", envvar="TRTBUILD_SHUTDOWN_TIMEOUT", type=click.FloatRange(min=0),
              default=10.0, show_default=True,
              help="On SIGTERM/Ctrl-C, seconds in-flight requests get to finish before they are cancelled.")
@click.option("--drain-seconds", envvar="TRTBUILD_DRAIN_SECONDS", show_envvar=True, type=click.FloatRange(min=0),
              default=0.0, show_default=True,
              help="On SIGTERM, first answer 503 on /v1/health/ready for S seconds while still serving, so a load "
                   "balancer stops routing here before the listener closes; a second signal skips it.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="info includes one JSON access-log line per request on stderr.")
@json_option
@click.pass_obj
def serve_cmd(ws, engine, host, port, api_key, served_model_name, max_queue, max_body_bytes, max_header_bytes,
              header_timeout, keep_alive_timeout, write_timeout, max_connections, send_buffer_bytes, shutdown_timeout, drain_seconds,
              log_level,
              as_json):
    """Serve ENGINE (a path, variant name or key prefix) with an OpenAI-compatible API.

    \b
    The socket opens at once; the engine loads in the background (GET /health answers 503 until it
    is ready, then 200). Routes: /v1/chat/completions, /v1/completions, /v1/models, /health,
    /metrics (Prometheus), /tokenize, /detokenize, /version, and NIM's /v1/health/live,
    /v1/health/ready, /v1/metadata, /v1/version. Chat prompts use Mistral's v3 format
    through mistral-common. Example:
      trtbuild serve fp16 --port 8000 &
      curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "<name>", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from trtbuild.errors import TrtbuildError
    from trtbuild.server import ServerSettings, create_app
    from trtbuild.server.limits import ConnectionLimits, protocol_class, raise_open_file_limit

    engine_dir = ws.resolve_engine(engine)
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{_url_host(bound_host)}:{bound_port}"
    limits = ConnectionLimits(max_header_bytes=max_header_bytes, header_timeout=header_timeout,
                              keep_alive_timeout=keep_alive_timeout, write_timeout=write_timeout,
                              max_connections=max_connections, send_buffer_bytes=send_buffer_bytes)
    settings = ServerSettings(served_model_name=served_model_name, api_key=api_key, max_queue=max_queue,
                              max_body_bytes=max_body_bytes, shutdown_timeout=shutdown_timeout, limits=limits)
    load_errors: list[Exception] = []

    def load():
        from trtbuild.runtime import load_engine

        return load_engine(engine_dir)

    def on_load_error(exc: Exception) -> None:  # engine thread: ask uvicorn to stop, report after
        load_errors.append(exc)
        server.should_exit = True

    app = create_app(load, settings, on_load_error=on_load_error)
    _setup_logging(log_level)
    raise_open_file_limit(limits)
    # uvicorn's httptools protocol plus our limits (trtbuild.server.limits); its keep-alive timer as is
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(shutdown_timeout) + 5,
                            http=protocol_class(limits, app.state.server.connection_metrics),
                            timeout_keep_alive=keep_alive_timeout)
    server = GracefulServer(config, app.state.server, drain_seconds=drain_seconds)
    model = served_model_name or engine_dir.name
    emit({"url": url, "openai_base_url": f"{url}/v1", "model": model, "engine_dir": str(engine_dir),
          "api_key_required": api_key is not None, "pid": os.getpid()},
         f"serving {engine_dir.name} as model {model!r} at {url}/v1 (loading; GET {url}/health answers 200 "
         "when ready; Ctrl-C stops)", as_json, None)
    sys.stdout.flush()
    server.run(sockets=[sock])
    if load_errors:
        exc = load_errors[0]
        raise TrtbuildError(str(exc) if isinstance(exc, TrtbuildError) else
                            f"engine {engine_dir.name} failed to load: {type(exc).__name__}: {exc}")


def _listen(host: str, port: int) -> socket.socket:
    """Bind before anything slow, so a busy port is a one-line error, not a traceback after loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from trtbuild.errors import TrtbuildError

        raise TrtbuildError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or --host") from None
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _setup_logging(level: str) -> None:
    """Server messages as `LEVEL: text`, access-log lines as bare JSON, both on stderr."""
    for name, fmt in (("trtbuild.server", "%(levelname)s:     %(message)s"), ("trtbuild.server.access", "%(message)s")):
        logger = logging.getLogger(name)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt))
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


class GracefulServer(uvicorn.Server):
    """uvicorn's server, telling the app when shutdown starts: in-flight requests get --shutdown-timeout
    to finish, then end with an error event (streams) or a 503, rather than a cut connection.

    With drain_seconds, a SIGTERM first drains: readiness answers 503 while requests are still served, so a
    load balancer (HAProxy's health check, a Kubernetes readiness probe) takes the replica out before its
    listener closes and no request is refused. A second signal during the drain shuts down at once."""

    def __init__(self, config, state, drain_seconds: float = 0.0):
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds
        self.drain_until: float | None = None
        self.drain_logged = False

    def handle_exit(self, sig, frame):  # the signal handler, on the main thread: set flags only
        if sig == signal.SIGTERM and self.drain_seconds > 0 and self.drain_until is None and not self.should_exit:
            self._captured_signals.append(sig)  # uvicorn re-raises it after the shutdown: exit status 143
            self.drain_until = time.monotonic() + self.drain_seconds
            self.state.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:  # every 0.1 s on the event loop
        if self.drain_until is not None and not self.should_exit:
            log = logging.getLogger("trtbuild.server")
            if not self.drain_logged:  # not from the signal handler: logging takes locks
                self.drain_logged = True
                log.info("SIGTERM: draining for %.1f s (readiness 503, still serving)", self.drain_seconds)
            if time.monotonic() >= self.drain_until:
                log.info("drained; shutting down")
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None):
        self.state.begin_shutdown()
        await super().shutdown(sockets)
