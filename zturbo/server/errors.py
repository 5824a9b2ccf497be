"""The one place where exceptions become HTTP status codes.

Routes raise `zturbo.errors` classes (or the few server-only ones below); the handlers installed by
`install_error_handlers` turn them into ComfyUI-shaped JSON (`{"error": {type, message, details,
extra_info}}`). Anything unexpected is a 500 with a logged traceback, never a dead server, and
never a dropped connection: Starlette's own last-resort handler re-raises after answering, which makes
uvicorn close a keep-alive connection, so `CatchAllMiddleware` answers instead and stops there.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from zturbo.errors import (
    GenerationError,
    ImageTooLargeError,
    InputError,
    Interrupted,
    MissingModelError,
    ModelFileError,
    ZTurboError,
)

log = logging.getLogger(__name__)


class NotFoundError(ZTurboError):
    """The file, history entry, node class or model folder asked for does not exist."""


class ForbiddenPathError(ZTurboError):
    """A path resolved outside the folder it must stay in (`..`, absolute, symlink escape)."""


class PayloadTooLargeError(ZTurboError):
    """A request or upload is over the configured size limit."""


class UnauthorizedError(ZTurboError):
    """The auth token is missing or wrong."""


# Most specific first: the first isinstance match wins.
STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (UnauthorizedError, 401),
    (ForbiddenPathError, 403),
    (NotFoundError, 404),
    (MissingModelError, 404),
    (PayloadTooLargeError, 413),
    (ImageTooLargeError, 413),
    (InputError, 400),
    (ModelFileError, 422),
    (Interrupted, 409),
    (GenerationError, 500),
    (ZTurboError, 500),
)


def status_for(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return 400
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def error_type(exc: BaseException) -> str:
    """`ForbiddenPathError` -> `forbidden_path`: ComfyUI's error types are snake_case words."""
    name = type(exc).__name__.removesuffix("Error") or type(exc).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_body(exc: BaseException) -> dict:
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        message = "file name too long for this file system (at most 255 bytes a name)"
        return {"error": {"type": "name_too_long", "message": message, "details": message, "extra_info": {}}}
    message = str(exc) or type(exc).__name__
    return {"error": {"type": error_type(exc), "message": message, "details": message, "extra_info": {}}}


def error_response(exc: BaseException) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=status_for(exc))


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def server_error_response() -> JSONResponse:
    # No exception text: it can hold paths and values the client has no business seeing (the log has it).
    message = "internal server error (the server log has the details)"
    body = {"error": {"type": "server_error", "message": message, "details": message, "extra_info": {}}}
    return JSONResponse(body, status_code=500)


Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


class CatchAllMiddleware:
    """Last resort for HTTP: log the traceback, answer 500 if nothing was sent yet, keep the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if isinstance(exc, (ZTurboError, OSError)) and status_for(exc) < 500 and not started:
                await error_response(exc)(scope, receive, send)
                return
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half a response is out: only closing the connection can tell the client
            await server_error_response()(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ZTurboError, _domain_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (its `detail` list, which the pages read), without echoing the input back (it can be
    megabytes), plus ComfyUI's `error` with one line per field."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
    lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in detail]
    message = "; ".join(lines) or "invalid request"
    error = {"type": "invalid_request", "message": message, "details": message, "extra_info": {}}
    return JSONResponse({"detail": detail, "error": error}, status_code=422)


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    if status_for(exc) < 500:
        return error_response(exc)
    log.error("error on %s %s", request.method, request.url.path, exc_info=exc)
    return server_error_response()
