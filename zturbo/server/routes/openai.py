"""OpenAI's images API on `/v1`: `POST /v1/images/generations`, `POST /v1/images/edits`, `GET /v1/models`.

The official `openai` package works unchanged: `OpenAI(base_url="http://127.0.0.1:8188/v1",
api_key=<the server's token, or anything without one>)`. Jobs go through the server's queue and
history (`client_jobs`); the translation is `zturbo.server.openai_images`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from zturbo.checkpoints import layout
from zturbo.errors import InputError
from zturbo.server import client_jobs
from zturbo.server.compat import json_object
from zturbo.server.deps import State
from zturbo.server.openai_images import (
    error_payload,
    images_response,
    models_response,
    parse_options,
    parse_size,
    to_request,
)
from zturbo.server.state import ServerState

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])
CLIENT = "openai"


async def _answer(work: Callable[[], Awaitable[dict]]) -> JSONResponse:
    """The route's result, or its failure in OpenAI's error shape (never ComfyUI's)."""
    try:
        return JSONResponse(await work())
    except Exception as exc:
        status, body = error_payload(exc)
        if status >= 500:
            log.exception("OpenAI images request failed")
        return JSONResponse(body, status_code=status)


@router.post("/images/generations")
async def generations(request: Request, state: State) -> JSONResponse:
    async def work() -> dict:
        options = parse_options(json_object(request.scope))
        job = to_request(options, parse_size(options.size))
        result = await client_jobs.run_request(state, job, CLIENT)
        return images_response(result, options.response_format, str(request.base_url))

    return await _answer(work)


async def _upload_bytes(form: Any, names: tuple[str, ...], state: ServerState) -> bytes | None:
    for name in names:
        value = form.get(name)
        if isinstance(value, UploadFile):
            data = await value.read(state.config.max_upload_bytes + 1)
            return data
    return None


@router.post("/images/edits")
async def edits(request: Request, state: State) -> JSONResponse:
    async def work() -> dict:
        form = await request.form()
        image = await _upload_bytes(form, ("image", "image[]"), state)
        if image is None:
            raise InputError("image: expected an image file (multipart field 'image')")
        mask = await _upload_bytes(form, ("mask",), state)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        options = parse_options(fields)
        job = await asyncio.to_thread(_edit_request, state, options, image, mask)
        result = await client_jobs.run_request(state, job, CLIENT)
        return images_response(result, options.response_format, str(request.base_url))

    return await _answer(work)


def _edit_request(state: ServerState, options: Any, image: bytes, mask: bytes | None) -> Any:
    """Mask given: inpaint its transparent part; none but a transparent image: inpaint that; else img2img
    at `strength`. The size defaults to the image's own (to multiples of 16)."""
    from dataclasses import replace

    from zturbo.images import image_size
    from zturbo.request import default_size

    name = client_jobs.store_input(state, image, CLIENT, "image")
    mask_name = ""
    if mask is not None:
        mask_name = client_jobs.store_input(state, mask, CLIENT, "mask", mask="alpha_inverted")
    elif client_jobs.has_transparency(image, "image"):
        mask_name = "alpha"
    if options.n != 1:
        raise InputError(
            f"n: an edit makes one image per request here (got {options.n}); send it again for more"
        )
    own = default_size(*image_size(state.config.input_dir / name, "image"))
    job = to_request(options, parse_size(options.size, own))
    return replace(job, image=name, mask=mask_name, denoise=1.0 if mask_name else options.strength)


@router.get("/models")
async def models(state: State) -> JSONResponse:
    async def work() -> dict:
        return models_response(layout.model_names(state.config.models_dir, "diffusion_models"))

    return await _answer(work)
