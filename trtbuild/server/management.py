"""NIM's management routes, so probes and tooling written for an NVIDIA NIM work against trtbuild unchanged.

    GET /v1/health/live    200 while the process runs (liveness: restart the pod only if this fails)
    GET /v1/health/ready   200 once the engine is loaded and the server takes requests; 503 while loading,
                           after the engine died, and from the first SIGTERM on (draining: a load balancer
                           stops routing here while requests in flight, and late ones, still complete)
    GET /v1/metadata       what is served: engine, variant, precision, build settings, versions (manifest)
    GET /v1/version        {"release": trtbuild version, "api": OpenAI API version served}

Shapes follow NIM's API reference (docs.nvidia.com/nim/large-language-models, "Management Endpoints"):
health answers {"object": "health.response", "message": ..., "status": ...}, a 503 carries {"error": {...}}.
Live, ready and version need no API key (probes have none); metadata does when a key is set.
"""

from __future__ import annotations

from fastapi import FastAPI

from trtbuild import __version__
from trtbuild.server.errors import json_response, unavailable
from trtbuild.server.state import ServerState

API_VERSION = "v1"  # the OpenAI API version of /v1/chat/completions and /v1/completions


def readiness(state: ServerState) -> tuple[int, str]:
    """Ready = the server takes requests now and is not draining toward a shutdown."""
    status, why = state.health
    if status == 200 and state.draining:
        return 503, "draining before shutdown"
    return status, why


def _health(message: str, status: str) -> dict:
    return {"object": "health.response", "message": message, "status": status}


def engine_metadata(state: ServerState) -> dict:
    """The engine served, from its manifest; 503 until the engine is loaded."""
    info = state.ready().info
    manifest = None
    if info.engine_dir:
        from trtbuild.errors import TrtbuildError
        from trtbuild.manifest import load_manifest

        try:
            manifest = load_manifest(info.engine_dir)
        except TrtbuildError:
            manifest = None  # an engine handed to create_app directly (tests) may have no manifest on disk
    # precision: as built (manifest); runtime: as this machine runs it (e.g. compute dtype, device)
    engine_part = {"name": info.name, "variant": info.variant, "backend": info.backend,
                   "precision": info.precision, "runtime": info.precision, "max_seq_len": info.max_seq_len,
                   "max_batch_size": info.max_batch_size, "key": None, "build": None, "source": None,
                   "versions": None, "gpu": None, "built_at": None}
    if manifest is not None:
        engine_part.update(key=manifest.key, precision=manifest.precision, build=manifest.build, gpu=manifest.gpu,
                           built_at=manifest.built_at, versions=manifest.versions,
                           source={k: manifest.source.get(k) for k in ("model_id", "revision")})
    data = {
        "version": __version__,
        "modelInfo": [{"shortName": state.model_name, "modelUrl": info.model_id}],
        "selectedModelProfileId": manifest.key if manifest else None,
        "assetInfo": [],
        "trtbuild": engine_part,
    }
    return data


def install_management_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/health/live")
    async def health_live():
        return json_response(_health("Service is live.", "live"))

    @app.get("/v1/health/ready")
    async def health_ready():
        status, why = readiness(state)
        if status != 200:
            return unavailable(f"Service is not ready: {why}.").response()
        return json_response(_health("Service is ready.", "ready"))

    cache: dict = {}

    @app.get("/v1/metadata")
    async def metadata():
        if "data" not in cache:  # read the manifest once: it is fixed while the engine is served
            cache["data"] = engine_metadata(state)
        return json_response(cache["data"])

    @app.get("/v1/version")
    async def version():
        return json_response({"release": __version__, "api": API_VERSION})
