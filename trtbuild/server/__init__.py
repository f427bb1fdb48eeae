"""OpenAI-compatible HTTP server for one engine (`trtbuild serve`): FastAPI over the generation interface.

    from trtbuild.server import create_app, ServerSettings
    app = create_app(engine, ServerSettings(api_key="secret"))

Modules: app (routes), generate (chat/completions flow), protocol (request models), render (response
and SSE shapes), prompts (OpenAI messages -> Mistral v3 ids), state (engine lifecycle, bounded queue),
middleware (request id, API key, body limit, access log), metrics (Prometheus), errors (OpenAI shape).
"""

from trtbuild.server.app import create_app
from trtbuild.server.state import ServerSettings

__all__ = ["create_app", "ServerSettings"]
