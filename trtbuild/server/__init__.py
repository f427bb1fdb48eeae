"""OpenAI-compatible HTTP server for one engine (`trtbuild serve`): FastAPI over the generation interface.

    from trtbuild.server import create_app, ServerSettings
    app = create_app(engine, ServerSettings(api_key="secret"))

Modules: app (routes), generate (chat/completions flow), protocol (request models), strict (their field
types), render (response and SSE shapes), logprobs (token lists that spell the text), prompts (OpenAI
messages -> Mistral v3 ids), guards (cheap checks before tokenizing), state (engine lifecycle, bounded
queue), middleware (request id, API key, body limit, access log), limits (connection-level limits under
uvicorn), metrics (Prometheus), errors (OpenAI shape), openapi (the document of all that).
"""

from trtbuild.server.app import create_app
from trtbuild.server.state import ServerSettings

__all__ = ["create_app", "ServerSettings"]
