"""ASGI middleware that guards every route, WebSocket included.

- DNS rebinding: a page on `evil.example` whose name is made to resolve to 127.0.0.1 talks to us
  *same-origin*, so the Origin check cannot see it; its requests carry `Host: evil.example`. Every
  request (WebSocket too) whose Host is not a loopback name, the address we listen on or an
  `--allowed-host` is refused before routing.
- Cross-origin protection: a browser page on another site must not be able to queue jobs (browsers
  let any page POST to 127.0.0.1). Reject `Sec-Fetch-Site: cross-site`, and an `Origin` whose host or
  port differs from the `Host` (a missing port is the scheme's default: `http://127.0.0.1` is port 80).
- Bearer-token auth, required when the server listens on a non-loopback address.
- Body size limits (413), checked on `Content-Length` and again while the body streams in.

Pure ASGI (not `BaseHTTPMiddleware`) so the same checks cover `websocket` scopes.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse

from zturbo.server.config import ServerConfig
from zturbo.server.errors import PayloadTooLargeError, error_response

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PREFIXES = ("/upload/", "/api/upload/")
PROMPT_PATHS = ("/prompt", "/api/prompt")
OPENAI_PREFIX = "/v1/"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        # Closing before accept makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": message})
        return
    body: dict[str, Any] = {"error": message}
    if scope.get("path", "").startswith(OPENAI_PREFIX):  # OpenAI clients read error.message
        kind = "authentication_error" if status == 401 else "permission_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    await JSONResponse(body, status_code=status)(scope, receive, send)


DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def split_host(value: str) -> tuple[str | None, int | None]:
    """`Host` header -> (lower-case name without brackets, port or None); (None, None) if malformed."""
    try:
        parts = urlsplit("//" + value.strip().lower())
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def cross_origin_reason(headers: dict[str, str], allowed_hosts: tuple[str, ...] = ()) -> str | None:
    """Why a request looks cross-site, or None when it may pass.

    A browser names the port in `Origin` unless it is the scheme's default, so an Origin without a port
    means 80 (or 443): `http://127.0.0.1` is another origin than a server on 127.0.0.1:8188. An Origin
    whose name is in `allowed_hosts` passes (a reverse proxy that rewrites the Host header).
    """
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "cross-site request refused"
    origin, host = headers.get("origin"), headers.get("host")
    if origin is None:
        return None
    if origin.strip().lower() == "null":
        return "opaque origin refused"
    try:
        parsed = urlsplit(origin.strip().lower())
        origin_name, scheme = parsed.hostname, parsed.scheme
        origin_port = parsed.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return "malformed origin refused"
    if not origin_name or scheme not in DEFAULT_PORTS:
        return f"malformed origin {origin!r} refused"
    if origin_name in allowed_hosts:
        return None
    host_name, host_port = split_host(host or "")
    same = origin_name == host_name and origin_port == (host_port or DEFAULT_PORTS[scheme])
    return None if same else f"origin {origin!r} does not match host {host!r}"


class HostGuardMiddleware:
    """403 for requests addressed to a name this server was not told to answer (DNS rebinding)."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = _headers(scope).get("host")
            # No Host at all is an HTTP/1.0 client, never a browser page: nothing to rebind.
            name = split_host(host)[0] if host is not None else None
            if host is not None and not self.config.host_allowed(name):
                reason = (
                    f"host {host!r} is not served here (DNS rebinding protection); "
                    "start the server with --allowed-host NAME to answer to that name"
                )
                log.warning("refused %s %s: %s", scope["type"], scope.get("path"), reason)
                await _reject(scope, receive, send, 403, reason)
                return
        await self.app(scope, receive, send)


class OriginGuardMiddleware:
    """403 for cross-site requests (a page on another origin, or `Sec-Fetch-Site: cross-site`)."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            reason = cross_origin_reason(_headers(scope), self.allowed_hosts)
            if reason is not None:
                log.warning("refused %s %s: %s", scope["type"], scope.get("path"), reason)
                await _reject(scope, receive, send, 403, reason)
                return
        await self.app(scope, receive, send)


def request_token(scope: Scope) -> str | None:
    """The token from `Authorization: Bearer ...`, the password of `Authorization: Basic ...` (how
    A1111 clients such as Open WebUI send their "user:password" API auth), else from `?token=`."""
    auth = _headers(scope).get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if auth[:6].lower() == "basic ":
        return _basic_password(auth[6:].strip())
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token")
    return values[0] if values else None


def _basic_password(value: str) -> str | None:
    import base64
    import binascii

    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[1] if ":" in decoded else None


class TokenAuthMiddleware:
    """401 unless the request carries the configured token (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            given = request_token(scope)
            if given is None or not hmac.compare_digest(given.encode(), self.token):
                await _reject(scope, receive, send, 401, "missing or invalid auth token")
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over the limit: uploads get `upload_limit`, everything else `request_limit`."""

    def __init__(
        self, app: ASGIApp, request_limit: int, upload_limit: int, prompt_limit: int | None = None
    ) -> None:
        self.app = app
        self.request_limit = request_limit
        self.upload_limit = upload_limit
        self.prompt_limit = prompt_limit or request_limit

    def limit_for(self, path: str) -> int:
        if path.startswith(UPLOAD_PREFIXES):
            return self.upload_limit
        return self.prompt_limit if path.rstrip("/") in PROMPT_PATHS else self.request_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _headers(scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(PayloadTooLargeError(f"request body over {limit} bytes"))(
                scope, receive, send
            )
            return
        guard = _BodyGuard(receive, send, limit)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.exceeded:
                raise
        await guard.finish(scope)


class _BodyGuard:
    """Counts body bytes as they stream in; once over the limit, the app's own answer (whatever a
    framework made of the aborted read) is replaced by a 413."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive, self._send, self.limit = receive, send, limit
        self.seen = 0
        self.exceeded = False
        self.started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                raise PayloadTooLargeError(f"request body over {self.limit} bytes")
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def finish(self, scope: Scope) -> None:
        if self.exceeded and not self.started:
            response = error_response(PayloadTooLargeError(f"request body over {self.limit} bytes"))
            await response(scope, self._receive, self._send)
