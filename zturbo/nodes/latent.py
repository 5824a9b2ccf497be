"""Latent nodes: empty latents, latent resizing, and the VAE's way in and out of latent space.

LATENT values are dicts `{"samples": Tensor[B, 16, H/8, W/8]}` in raw VAE space, as in ComfyUI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from zturbo.models.vae import LATENT_CHANNELS
from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.schema import Combo, Float, Int, Link, NodeSchema, Output
from zturbo.resize import common_upscale

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext

MAX_RESOLUTION = 16384
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


def empty_latent(width: int, height: int, batch_size: int) -> dict[str, torch.Tensor]:
    return {"samples": torch.zeros([batch_size, LATENT_CHANNELS, height // 8, width // 8])}


class EmptySD3LatentImage(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="EmptySD3LatentImage",
        category="model/latent/stable diffusion",
        style="v3",
        python_module="comfy_extras.nodes_sd3",
        inputs=(
            Int("width", default=1024, min=16, max=MAX_RESOLUTION, step=16),
            Int("height", default=1024, min=16, max=MAX_RESOLUTION, step=16),
            Int("batch_size", default=1, min=1, max=4096),
        ),
        outputs=(Output("LATENT"),),
    )

    def execute(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[dict]:
        return (empty_latent(width, height, batch_size),)


class EmptyLatentImage(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="EmptyLatentImage",
        display_name="Empty Latent Image",
        category="model/latent",
        description="Create a new batch of empty latent images to be denoised via sampling.",
        inputs=(
            Int(
                "width",
                default=512,
                min=16,
                max=MAX_RESOLUTION,
                step=8,
                tooltip="The width of the latent images in pixels.",
            ),
            Int(
                "height",
                default=512,
                min=16,
                max=MAX_RESOLUTION,
                step=8,
                tooltip="The height of the latent images in pixels.",
            ),
            Int(
                "batch_size", default=1, min=1, max=4096, tooltip="The number of latent images in the batch."
            ),
        ),
        outputs=(Output("LATENT", tooltip="The empty latent image batch."),),
    )

    def execute(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[dict]:
        # ComfyUI makes 4 channels and widens empty latents to the model's 16 before sampling;
        # zeros are zeros, so making the 16-channel latent directly gives the same result.
        return (empty_latent(width, height, batch_size),)


class LatentUpscaleBy(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="LatentUpscaleBy",
        display_name="Upscale Latent By",
        category="model/latent",
        inputs=(
            Link("samples", "LATENT"),
            Combo("upscale_method", LATENT_UPSCALE_METHODS),
            Float("scale_by", default=1.5, min=0.01, max=8.0, step=0.01),
        ),
        outputs=(Output("LATENT"),),
    )

    def execute(self, ctx: NodeContext, samples: dict, upscale_method: str, scale_by: float) -> tuple[dict]:
        latent = samples["samples"]
        width = round(latent.shape[-1] * scale_by)
        height = round(latent.shape[-2] * scale_by)
        out = dict(samples)
        out["samples"] = common_upscale(latent, width, height, upscale_method, "disabled")
        return (out,)


class VAEDecode(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="VAEDecode",
        display_name="VAE Decode",
        category="model/latent",
        description="Decodes latent images back into pixel space images.",
        inputs=(
            Link("samples", "LATENT", tooltip="The latent to be decoded."),
            Link("vae", "VAE", tooltip="The VAE model used for decoding the latent."),
        ),
        outputs=(Output("IMAGE", tooltip="The decoded image."),),
    )

    def execute(self, ctx: NodeContext, samples: dict, vae: Any) -> tuple[torch.Tensor]:
        return (require_engine(ctx).decode(vae, samples["samples"]),)


def crop_to_multiple(pixels: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Centre-crop an IMAGE so both sides are multiples of `multiple` (ComfyUI's VAEEncode crop)."""
    height = (pixels.shape[1] // multiple) * multiple
    width = (pixels.shape[2] // multiple) * multiple
    if (height, width) == tuple(pixels.shape[1:3]):
        return pixels
    y = (pixels.shape[1] % multiple) // 2
    x = (pixels.shape[2] % multiple) // 2
    return pixels[:, y : y + height, x : x + width, :]


class VAEEncode(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="VAEEncode",
        display_name="VAE Encode",
        category="model/latent",
        inputs=(Link("pixels", "IMAGE"), Link("vae", "VAE")),
        outputs=(Output("LATENT"),),
    )

    def execute(self, ctx: NodeContext, pixels: torch.Tensor, vae: Any) -> tuple[dict]:
        pixels = crop_to_multiple(pixels)
        return ({"samples": require_engine(ctx).encode(vae, pixels[:, :, :, :3])},)


class LatentUpscale(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="LatentUpscale",
        display_name="Upscale Latent",
        category="model/latent",
        inputs=(
            Link("samples", "LATENT"),
            Combo("upscale_method", LATENT_UPSCALE_METHODS),
            Int("width", default=512, min=0, max=MAX_RESOLUTION, step=8),
            Int("height", default=512, min=0, max=MAX_RESOLUTION, step=8),
            Combo("crop", ("disabled", "center")),
        ),
        outputs=(Output("LATENT"),),
    )

    def execute(
        self, ctx: NodeContext, samples: dict, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[dict]:
        """To width×height pixels (÷8 in latent cells); 0 keeps the aspect ratio; at least 64 pixels."""
        if width == 0 and height == 0:
            return (samples,)
        latent = samples["samples"]
        if width == 0:
            height = max(64, height)
            width = max(64, round(latent.shape[-1] * height / latent.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(latent.shape[-2] * width / latent.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        out = dict(samples)
        out["samples"] = common_upscale(latent, width // 8, height // 8, upscale_method, crop)
        return (out,)


TEMPORAL_SIZE_TIP = "Only used for video VAEs: Amount of frames to {} at a time."
TEMPORAL_OVERLAP_TIP = "Only used for video VAEs: Amount of frames to overlap."


def _tiles(tile_size: int, overlap: int) -> tuple[int, int]:
    """As ComfyUI: an overlap over a quarter of the tile is cut to a quarter."""
    return tile_size, overlap if tile_size >= overlap * 4 else tile_size // 4


class VAEDecodeTiled(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="VAEDecodeTiled",
        display_name="VAE Decode (Tiled)",
        category="model/latent",
        inputs=(
            Link("samples", "LATENT"),
            Link("vae", "VAE"),
            Int("tile_size", default=512, min=64, max=4096, step=32),
            Int("overlap", default=64, min=0, max=4096, step=32),
            Int("temporal_size", default=64, min=8, max=4096, step=4, tooltip=TEMPORAL_SIZE_TIP.format("decode")),
            Int("temporal_overlap", default=8, min=4, max=4096, step=4, tooltip=TEMPORAL_OVERLAP_TIP),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(
        self, ctx: NodeContext, samples: dict, vae: Any, tile_size: int, overlap: int = 64, **_: Any
    ) -> tuple[torch.Tensor]:
        return (require_engine(ctx).decode(vae, samples["samples"], tile=_tiles(tile_size, overlap)),)


class VAEEncodeTiled(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="VAEEncodeTiled",
        display_name="VAE Encode (Tiled)",
        category="model/latent",
        inputs=(
            Link("pixels", "IMAGE"),
            Link("vae", "VAE"),
            Int("tile_size", default=512, min=64, max=4096, step=64),
            Int("overlap", default=64, min=0, max=4096, step=32),
            Int("temporal_size", default=64, min=8, max=4096, step=4, tooltip=TEMPORAL_SIZE_TIP.format("encode")),
            Int("temporal_overlap", default=8, min=4, max=4096, step=4, tooltip=TEMPORAL_OVERLAP_TIP),
        ),
        outputs=(Output("LATENT"),),
    )

    def execute(
        self, ctx: NodeContext, pixels: torch.Tensor, vae: Any, tile_size: int, overlap: int = 64, **_: Any
    ) -> tuple[dict]:
        pixels = crop_to_multiple(pixels)
        latent = require_engine(ctx).encode(vae, pixels[:, :, :, :3], tile=_tiles(tile_size, overlap))
        return ({"samples": latent},)


NODES = (
    EmptySD3LatentImage, EmptyLatentImage, LatentUpscaleBy, VAEDecode, VAEEncode, LatentUpscale, VAEDecodeTiled,
    VAEEncodeTiled,
)  # fmt: skip
