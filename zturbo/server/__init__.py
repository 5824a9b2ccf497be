"""ComfyUI-compatible HTTP/WebSocket server: `create_app(config)` for tests and embedding,
`serve(config)` for the CLI."""

from zturbo.server.app import create_app, serve
from zturbo.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app", "serve"]
