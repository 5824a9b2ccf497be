"""AUTOMATIC1111's `/sdapi/v1` ⇄ zturbo requests: A1111's field names in, its response shapes out.

Fields a client leaves out take zturbo's defaults (the official Z-Image-Turbo workflow's: 1024×1024,
8 steps, cfg 1, res_multistep/simple), not A1111's SD1.5 ones (512², 20 steps, cfg 7), which would
ruin a distilled model. Sampler names are A1111's labels ("Euler a", "DPM++ 2M") or ComfyUI's
(`euler_ancestral`); scheduler names ComfyUI's, or A1111's "automatic" (the default).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zturbo.errors import InputError
from zturbo.output.metadata import ModelFiles, parameters_text
from zturbo.request import MAX_BATCH, MAX_PROMPT_CHARS, GenerationRequest
from zturbo.server.client_jobs import with_seed

# A1111's sampler labels for the ComfyUI samplers zturbo has under another name.
A1111_LABELS = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpm_fast": "DPM fast",
    "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "lcm": "LCM",
    "res_multistep": "Res Multistep",
}
AUTOMATIC = "automatic"


class Txt2Img(BaseModel):
    """The A1111 fields zturbo acts on; the rest (styles, restore_faces, scripts...) are accepted and
    ignored, as A1111 ignores options a model does not have."""

    model_config = ConfigDict(extra="allow")
    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # the pre-1.0 name of sampler_name
    scheduler: str | None = None
    batch_size: int = Field(default=1, ge=1, le=MAX_BATCH)
    n_iter: int = Field(default=1, ge=1, le=MAX_BATCH)
    steps: int | None = Field(default=None, ge=1, le=1000)
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    denoising_strength: float | None = Field(default=None, ge=0.0, le=1.0)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_second_pass_steps: int = 0
    send_images: bool = True


class Img2Img(Txt2Img):
    init_images: list[str] = Field(default_factory=list)
    mask: str | None = None
    mask_blur: int | None = Field(default=None, ge=0, le=64)
    inpainting_mask_invert: int = 0


def parse(model: type[Txt2Img], data: Any) -> Txt2Img:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InputError(f"{field}: {first['msg']}") from None


def comfy_sampler(name: str | None, available: list[str]) -> str | None:
    """A1111 label or ComfyUI name → ComfyUI name (None: the default)."""
    if not name:
        return None
    if name in available:
        return name
    by_label = {label.lower(): comfy for comfy, label in A1111_LABELS.items() if comfy in available}
    found = by_label.get(name.strip().lower())
    if found is None:
        labels = [A1111_LABELS.get(n, n) for n in available]
        raise InputError(f"sampler_name: unknown sampler {name!r}; choose one of: {', '.join(labels)}")
    return found


def sampler_list(available: list[str]) -> list[dict]:
    return [{"name": A1111_LABELS.get(n, n), "aliases": [n], "options": {}} for n in available]


def scheduler_list(available: list[str]) -> list[dict]:
    names = [AUTOMATIC, *available]
    return [
        {
            "name": n,
            "label": n.replace("_", " ").title(),
            "aliases": None,
            "default_rho": -1,
            "need_inner_model": False,
        }
        for n in names
    ]


def to_request(body: Txt2Img, samplers: list[str], schedulers: list[str]) -> GenerationRequest:
    base = GenerationRequest(body.prompt)
    scheduler = body.scheduler if body.scheduler and body.scheduler.lower() != AUTOMATIC else None
    request = GenerationRequest(
        body.prompt,
        negative=body.negative_prompt,
        width=body.width or base.width,
        height=body.height or base.height,
        steps=body.steps or base.steps,
        cfg=body.cfg_scale if body.cfg_scale is not None else base.cfg,
        sampler=comfy_sampler(body.sampler_name or body.sampler_index, samplers) or base.sampler,
        scheduler=scheduler or base.scheduler,
        batch=body.batch_size,
    )
    if body.enable_hr and body.hr_scale > 1:
        steps = body.hr_second_pass_steps or base.hires_steps
        denoise = body.denoising_strength or base.hires_denoise
        request = replace(request, hires_scale=body.hr_scale, hires_steps=steps, hires_denoise=denoise)
    return with_seed(request, body.seed)


def img2img_fields(body: Img2Img, image: str, mask: str) -> dict[str, Any]:
    """The GenerationRequest fields an img2img body adds (A1111's default strength is 0.75)."""
    fields: dict[str, Any] = {"image": image, "batch": 1, "hires_scale": 1.0}
    fields["denoise"] = body.denoising_strength if body.denoising_strength is not None else 0.75
    if mask:
        fields["mask"] = mask
        if body.mask_blur is not None:
            fields["mask_blur"] = min(body.mask_blur, 31)
    return fields


def decode_image(text: str, what: str) -> bytes:
    """A1111's base64 image field, with or without a `data:image/...;base64,` prefix."""
    import base64
    import binascii

    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: expected a base64-encoded image") from None


def info_json(requests: list[GenerationRequest], models: ModelFiles) -> str:
    """A1111's `info`: a JSON string with the settings and one infotext per image."""
    first = requests[0]
    infotexts, seeds = [], []
    for request in requests:
        for index in range(request.batch):
            infotexts.append(parameters_text(request, models, index))
            seeds.append(request.seed)
    info = {
        "prompt": first.prompt,
        "all_prompts": [first.prompt] * len(infotexts),
        "negative_prompt": first.negative,
        "all_negative_prompts": [first.negative] * len(infotexts),
        "seed": first.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(infotexts),
        "subseed_strength": 0,
        "width": first.width,
        "height": first.height,
        "sampler_name": A1111_LABELS.get(first.sampler, first.sampler),
        "scheduler": first.scheduler,
        "cfg_scale": first.cfg,
        "steps": first.steps,
        "batch_size": first.batch,
        "denoising_strength": first.denoise if first.image else None,
        "sd_model_name": models.dit.rsplit(".", 1)[0],
        "sd_model_hash": models.dit_hash or None,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": "zturbo",
    }
    return json.dumps(info, ensure_ascii=False)


def parameters(body: Txt2Img) -> dict[str, Any]:
    """A1111 echoes the request as `parameters` (init images left out: they can be megabytes)."""
    return body.model_dump(exclude={"init_images", "mask"})


def model_entry(name: str) -> dict[str, Any]:
    return {
        "title": name,
        "model_name": name.rsplit(".", 1)[0],
        "hash": None,
        "sha256": None,
        "filename": name,
        "config": None,
    }


def progress_body(
    step: tuple[int, int] | None, elapsed: float | None, job_count: int, interrupted: bool = False
) -> dict[str, Any]:
    """`/sdapi/v1/progress`: the running job's fraction and ETA (0 and an empty state when idle)."""
    fraction = step[0] / step[1] if step and step[1] else 0.0
    eta = elapsed / fraction - elapsed if elapsed and fraction > 0 else 0.0
    return {
        "progress": round(fraction, 4),
        "eta_relative": round(eta, 3),
        "state": {
            "skipped": False,
            "interrupted": interrupted,
            "stopping_generation": False,
            "job": "" if step is None and not job_count else "zturbo",
            "job_count": job_count,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "job_no": 0,
            "sampling_step": step[0] if step else 0,
            "sampling_steps": step[1] if step else 0,
        },
        "current_image": None,
        "textinfo": None,
    }
