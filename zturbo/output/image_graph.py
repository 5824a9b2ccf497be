"""The image-input part of `api_graph`: the ComfyUI nodes `generate --image/--mask/--hires` runs.

Added to the text-to-image graph (ids "1"…"10"): LoadImage → ImageCrop|ImageScale (the fit rule) →
VAEEncode → [LoadImageMask (or LoadImage's MASK) → the same fit → GrowMask → SetLatentNoiseMask] →
KSampler → VAEDecode → [ImageCompositeMasked through the blurred mask] → [UpscaleModelLoader →
ImageUpscaleWithModel] → ImageScale → VAEEncode → KSampler → VAEDecode → SaveImage. Each node is the
function zturbo.generate calls for that stage, so the graph reproduces the image in ComfyUI and zturbo.
"""

from __future__ import annotations

from typing import Any

from zturbo.masks import MASK_BLUR_SIGMA
from zturbo.request import GenerationRequest, fit_rule

Link = list[Any]


def _node(graph: dict, node_id: str, class_type: str, **inputs: Any) -> Link:
    graph[node_id] = {"class_type": class_type, "inputs": inputs}
    return [node_id, 0]


def _fit(graph: dict, node_id: str, image: Link, request: GenerationRequest, size: tuple[int, int] | None) -> Link:
    width, height = request.width, request.height
    if size is not None and fit_rule(size[0], size[1], width, height) == "crop":
        x, y = (size[0] - width) // 2, (size[1] - height) // 2
        return _node(graph, node_id, "ImageCrop", image=image, width=width, height=height, x=x, y=y)
    return _node(
        graph, node_id, "ImageScale", image=image, upscale_method="lanczos", width=width, height=height, crop="center"
    )


def _mask_nodes(graph: dict, request: GenerationRequest, size: tuple[int, int] | None) -> tuple[Link, Link]:
    """The grown noise mask and the blurred paste mask."""
    if request.mask == "alpha":
        source: Link = ["11", 1]
    else:
        source = _node(graph, "14", "LoadImageMask", image=request.mask, channel="red")
    as_image = _node(graph, "15", "MaskToImage", mask=source)
    mask = _node(graph, "17", "ImageToMask", image=_fit(graph, "16", as_image, request, size), channel="red")
    if request.mask_grow:
        mask = _node(graph, "18", "GrowMask", mask=mask, expand=request.mask_grow, tapered_corners=True)
    paste = mask
    if request.mask_blur:
        blurred = _node(
            graph, "21", "ImageBlur", image=_node(graph, "20", "MaskToImage", mask=mask),
            blur_radius=request.mask_blur, sigma=MASK_BLUR_SIGMA,
        )  # fmt: skip
        paste = _node(graph, "22", "ImageToMask", image=blurred, channel="red")
    return mask, paste


def add_image_nodes(graph: dict, request: GenerationRequest, image_size: tuple[int, int] | None) -> None:
    """Turn the text-to-image `graph` into the image request's graph, in place."""
    sampler = dict(graph["8"]["inputs"])
    result: Link = ["9", 0]
    if request.image:
        pixels = _fit(graph, "12", _node(graph, "11", "LoadImage", image=request.image), request, image_size)
        if request.denoise > 0:
            latent = _node(graph, "13", "VAEEncode", pixels=pixels, vae=["3", 0])
            if request.mask:
                noise_mask, paste = _mask_nodes(graph, request, image_size)
                latent = _node(graph, "19", "SetLatentNoiseMask", samples=latent, mask=noise_mask)
                result = _node(
                    graph, "23", "ImageCompositeMasked", destination=pixels, source=result, x=0, y=0,
                    resize_source=False, mask=paste,
                )  # fmt: skip
            graph["8"]["inputs"]["latent_image"] = latent
            del graph["7"]
        else:
            for node_id in ("7", "8", "9"):
                del graph[node_id]
            result = pixels
    if request.hires_scale > 1:
        if request.upscale_model:
            loader = _node(graph, "24", "UpscaleModelLoader", model_name=request.upscale_model)
            result = _node(graph, "25", "ImageUpscaleWithModel", upscale_model=loader, image=result)
        width, height = request.hires_size
        scaled = _node(
            graph, "26", "ImageScale", image=result, upscale_method="lanczos", width=width, height=height,
            crop="disabled",
        )  # fmt: skip
        latent = _node(graph, "27", "VAEEncode", pixels=scaled, vae=["3", 0])
        refine = {**sampler, "steps": request.hires_steps, "denoise": request.hires_denoise, "latent_image": latent}
        result = _node(graph, "29", "VAEDecode", samples=_node(graph, "28", "KSampler", **refine), vae=["3", 0])
    graph["10"]["inputs"]["images"] = result
