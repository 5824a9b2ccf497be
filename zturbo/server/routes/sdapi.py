"""AUTOMATIC1111's API on `/sdapi/v1`: txt2img, img2img, progress, interrupt, sd-models, samplers,
schedulers, options. Clients that speak A1111 (Open WebUI, sdwebuiapi, chat front-ends) point their
"A1111 URL" at the server. Jobs share the queue and history (`client_jobs`); the translation is
`zturbo.server.a1111`. Errors are zturbo's JSON (`{"error": {"type", "message", ...}}`), one line each.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request

from zturbo.checkpoints import layout
from zturbo.errors import InputError
from zturbo.server import a1111, client_jobs
from zturbo.server.compat import json_object, parsed_body
from zturbo.server.creator import ksampler_choices, model_files
from zturbo.server.deps import State
from zturbo.server.state import ServerState

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])
CLIENT = "a1111"


def _body(request: Request, model: type[a1111.Txt2Img]) -> a1111.Txt2Img:
    found, data = parsed_body(request.scope)  # as the JSON middleware parsed it
    if not found:
        raise InputError("the body must be a JSON object")
    return a1111.parse(model, data)


def _choices(state: ServerState) -> tuple[list[str], list[str]]:
    return ksampler_choices(state.registry, "sampler_name"), ksampler_choices(state.registry, "scheduler")


async def _generate(state: ServerState, body: a1111.Txt2Img, first: Any) -> dict:
    """Run `n_iter` batches (seeds +1 each, as A1111 does) and answer A1111's `{images, parameters, info}`."""
    requests, images = [], []
    for index in range(body.n_iter):
        request = replace(first, seed=(first.seed + index) % (2**64))
        result = await client_jobs.run_request(state, request, CLIENT)
        requests.append(request)
        images += [base64.b64encode(image.data).decode("ascii") for image in result.images]
    info = a1111.info_json(requests, model_files(state.config.models_dir))
    return {"images": images if body.send_images else [], "parameters": a1111.parameters(body), "info": info}


@router.post("/txt2img")
async def txt2img(request: Request, state: State) -> dict:
    body = _body(request, a1111.Txt2Img)
    return await _generate(state, body, a1111.to_request(body, *_choices(state)))


@router.post("/img2img")
async def img2img(request: Request, state: State) -> dict:
    body = _body(request, a1111.Img2Img)
    assert isinstance(body, a1111.Img2Img)
    job = await asyncio.to_thread(_img2img_request, state, body)  # decoding and saving off the loop
    return await _generate(state, body, job)


def _img2img_request(state: ServerState, body: a1111.Img2Img) -> Any:
    """Store the init image (and mask) in `input/a1111/`; the request, sized as the image when the
    body names no size."""
    if not body.init_images:
        raise InputError("init_images: expected one base64-encoded image")
    data = a1111.decode_image(body.init_images[0], "init_images[0]")
    image = client_jobs.store_input(state, data, CLIENT, "init_images[0]")
    mask = ""
    if body.mask:
        kind = "invert" if body.inpainting_mask_invert else ""
        mask = client_jobs.store_input(
            state, a1111.decode_image(body.mask, "mask"), CLIENT, "mask", mask=kind
        )
    first = a1111.to_request(body, *_choices(state))
    if body.width is None or body.height is None:
        from zturbo.images import image_size
        from zturbo.request import default_size

        width, height = default_size(*image_size(state.config.input_dir / image, "init_images[0]"))
        first = replace(first, width=body.width or width, height=body.height or height)
    return replace(first, **a1111.img2img_fields(body, image, mask))


@router.get("/progress")
def progress(state: State) -> dict:
    channel = state.worker.channel
    if channel is None:
        return a1111.progress_body(None, None, state.queue.remaining())
    import time

    return a1111.progress_body(channel.step, time.monotonic() - channel.started, state.queue.remaining())


@router.post("/interrupt")
def interrupt(state: State) -> dict:
    state.queue.interrupt()
    return {}


@router.post("/skip")
def skip(state: State) -> dict:
    state.queue.interrupt()
    return {}


def _models(state: ServerState) -> list[str]:
    return layout.model_names(state.config.models_dir, "diffusion_models")


@router.get("/sd-models")
def sd_models(state: State) -> list[dict]:
    return [a1111.model_entry(name) for name in _models(state)]


@router.post("/refresh-checkpoints")
def refresh_checkpoints() -> dict:
    return {}  # the model lists are read from disk on every request


@router.get("/samplers")
def samplers(state: State) -> list[dict]:
    return a1111.sampler_list(_choices(state)[0])


@router.get("/schedulers")
def schedulers(state: State) -> list[dict]:
    return a1111.scheduler_list(_choices(state)[1])


@router.get("/options")
def get_options(state: State) -> dict:
    current = model_files(state.config.models_dir).dit
    return {"sd_model_checkpoint": current, "sd_checkpoint_hash": None, "samples_format": "png"}


@router.post("/options")
async def set_options(request: Request, state: State) -> dict:
    """Options are accepted; the model is the one in `models/` (one DiT a server): naming another
    file is an error rather than a silent switch."""
    wanted = json_object(request.scope).get("sd_model_checkpoint")
    current = model_files(state.config.models_dir).dit
    if wanted not in (None, current):
        raise InputError(
            f"sd_model_checkpoint: this server runs {current!r}; to use {wanted!r}, keep it as the only "
            "diffusion model in the models folder"
        )
    return {}
