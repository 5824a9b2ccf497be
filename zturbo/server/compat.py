"""Accept JSON bodies however the client labels them, as ComfyUI's server does.

ComfyUI parses every POST body as JSON whatever its Content-Type, and real clients rely on that:
`requests.post(url, data=json.dumps(...))` sends no Content-Type, and urllib (used by ComfyUI's own
API examples) labels the body `application/x-www-form-urlencoded`. FastAPI would answer those with 422,
so unlabelled, form-labelled and text-labelled bodies are relabelled as JSON before routing. Multipart
uploads keep their type.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

RELABEL = (b"", b"application/x-www-form-urlencoded", b"text/plain")


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if content_type.split(b";")[0].strip().lower() in RELABEL:
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
