"""OpenAI images API ⇄ zturbo requests: the fields OpenAI's `images.generate` / `images.edit` send,
the `{"created", "data": [...]}` answer, `/v1/models`, and errors in OpenAI's shape.

OpenAI's own fields: `prompt`, `n`, `size` ("WxH" or "auto"), `response_format` (b64_json | url),
`model` (accepted, not used: the server runs the model files it has). zturbo's extra fields (the
`extra_body` of the `openai` package): `seed`, `steps`, `negative_prompt`, `cfg`, `sampler`,
`scheduler`, and for edits `strength` (the img2img denoise when no mask is given).
"""

from __future__ import annotations

import time
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zturbo.errors import InputError, MissingModelError, ZTurboError
from zturbo.request import MAX_BATCH, MAX_PROMPT_CHARS, GenerationRequest
from zturbo.server.client_jobs import ClientResult, with_seed
from zturbo.server.errors import PayloadTooLargeError, status_for

DEFAULT_SIZE = (1024, 1024)
EDIT_STRENGTH = 0.7  # denoise of an edit without a mask (OpenAI has no such field)


class ImageOptions(BaseModel):
    """The fields generations and edits share (JSON body or multipart form)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=MAX_BATCH)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    seed: int | None = None
    steps: int | None = Field(default=None, ge=1, le=1000)
    negative_prompt: str = ""
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    strength: float = Field(default=EDIT_STRENGTH, gt=0.0, le=1.0)


def parse_options(data: dict[str, Any]) -> ImageOptions:
    try:
        return ImageOptions.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InputError(f"{field}: {first['msg']}") from None


def parse_size(size: str | None, default: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int]:
    if size is None or size == "auto":
        return default
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise InputError(f"size: expected WIDTHxHEIGHT such as 1024x1024 or 'auto' (got {size!r})") from None
    return width, height


def to_request(options: ImageOptions, size: tuple[int, int]) -> GenerationRequest:
    base = GenerationRequest(options.prompt)
    request = GenerationRequest(
        options.prompt,
        negative=options.negative_prompt,
        width=size[0],
        height=size[1],
        steps=options.steps or base.steps,
        cfg=options.cfg if options.cfg is not None else base.cfg,
        sampler=options.sampler or base.sampler,
        scheduler=options.scheduler or base.scheduler,
        batch=options.n,
    )
    return with_seed(request, options.seed)


def image_url(base_url: str, ref: dict[str, str]) -> str:
    return f"{base_url.rstrip('/')}/view?{urlencode(ref)}"


def images_response(result: ClientResult, response_format: str | None, base_url: str) -> dict:
    import base64

    data = []
    for image in result.images:
        if response_format == "url":
            entry = {"url": image_url(base_url, image.ref)}
        else:
            entry = {"b64_json": base64.b64encode(image.data).decode("ascii")}
        data.append({**entry, "revised_prompt": result.request.prompt})
    return {"created": int(time.time()), "data": data, "output_format": "png"}


def models_response(dit_files: list[str]) -> dict:
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "zturbo"} for name in dit_files
        ],
    }


def error_type(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        409: "request_cancelled",
        413: "invalid_request_error",
    }.get(status, "server_error")


def error_payload(exc: BaseException) -> tuple[int, dict]:
    """(status, OpenAI's error object) for any exception a route lets through."""
    if isinstance(exc, (ZTurboError, PayloadTooLargeError)):
        status, message = status_for(exc), str(exc)
    else:
        status, message = 500, "internal server error (see the server log)"
    code = "model_not_found" if isinstance(exc, MissingModelError) else None
    return status, {"error": {"message": message, "type": error_type(status), "param": None, "code": code}}
