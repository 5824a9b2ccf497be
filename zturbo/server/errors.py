"""The one place where exceptions become HTTP status codes.

Routes raise `zturbo.errors` classes (or the few server-only ones below); the handlers installed by
`install_error_handlers` turn them into ComfyUI-shaped JSON (`{"error": {type, message, details,
extra_info}}`). Anything unexpected is a 500 with a logged traceback, never a dead server.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from zturbo.errors import (
    GenerationError,
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
    (InputError, 400),
    (ModelFileError, 422),
    (Interrupted, 409),
    (GenerationError, 500),
    (ZTurboError, 500),
)


def status_for(exc: BaseException) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def error_type(exc: BaseException) -> str:
    """`ForbiddenPathError` -> `forbidden_path`: ComfyUI's error types are snake_case words."""
    name = type(exc).__name__.removesuffix("Error") or type(exc).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_body(exc: BaseException) -> dict:
    message = str(exc) or type(exc).__name__
    return {"error": {"type": error_type(exc), "message": message, "details": message, "extra_info": {}}}


def error_response(exc: BaseException) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=status_for(exc))


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {
            "error": {
                "type": "server_error",
                "message": "internal server error",
                "details": str(exc),
                "extra_info": {},
            }
        },
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ZTurboError, _domain_error)
    app.add_exception_handler(Exception, _unexpected_error)
