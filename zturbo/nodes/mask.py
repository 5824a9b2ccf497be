"""Inpainting and mask nodes, with ComfyUI's semantics (the maths is in `zturbo.masks`).

The repaint region travels in the LATENT dict as `noise_mask` (pixel-sized MASK, 1 = repaint); the
KSamplers hand it to the engine, which confines sampling to it. For Z-Image, InpaintModelConditioning's
concat latent matters to no model (ComfyUI's Lumina2 model takes no concat input): its conditioning
passes through, and its latent is the VAE encoding of the whole image with the noise mask.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from zturbo import masks
from zturbo.errors import InputError
from zturbo.images import MASK_CHANNELS, load_mask
from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.io import check_input_image, input_image_options
from zturbo.nodes.latent import MAX_RESOLUTION
from zturbo.nodes.schema import Boolean, Combo, Int, Link, NodeSchema, Output

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext, NodeContext


class LoadImageMask(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="LoadImageMask",
        display_name="Load Image (as Mask)",
        category="image",
        inputs=(Combo("image", input_image_options, image_upload=True), Combo("channel", MASK_CHANNELS)),
        outputs=(Output("MASK"),),
    )

    def execute(self, ctx: NodeContext, image: str, channel: str) -> tuple[torch.Tensor]:
        path = ctx.execution.resolve_annotated(image)
        if not path.is_file():
            raise InputError(f"LoadImageMask: {image!r} not found in the input folder")
        return (load_mask(path, channel, f"LoadImageMask {image!r}"),)

    @classmethod
    def is_changed(cls, ctx: ExecutionContext, image: str = "", channel: str = "", **_: Any) -> str:
        digest = hashlib.sha256(channel.encode())
        with open(ctx.resolve_annotated(image), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @classmethod
    def validate_inputs(cls, ctx: ExecutionContext, image: str, **_: Any) -> bool | str:
        return check_input_image(ctx, image)


class SetLatentNoiseMask(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="SetLatentNoiseMask",
        display_name="Set Latent Noise Mask",
        category="model/latent",
        inputs=(Link("samples", "LATENT"), Link("mask", "MASK")),
        outputs=(Output("LATENT"),),
    )

    def execute(self, ctx: NodeContext, samples: dict, mask: torch.Tensor) -> tuple[dict]:
        out = dict(samples)
        out["noise_mask"] = masks.as_batch(mask)[:, None]
        return (out,)


def _crop_pair(
    pixels: torch.Tensor, mask: torch.Tensor, multiple: int, node: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask bilinear to the image's size, then both centre-cropped to multiples of `multiple`."""
    height, width = pixels.shape[1], pixels.shape[2]
    masks.check_shape(mask, width, height, f"{node}: mask", "the image (pixels)")
    mask = masks.resize(mask, width, height)[:, None]
    h, w = height // multiple * multiple, width // multiple * multiple
    y, x = (height % multiple) // 2, (width % multiple) // 2
    return pixels[:, y : y + h, x : x + w, :], mask[:, :, y : y + h, x : x + w]


class VAEEncodeForInpaint(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="VAEEncodeForInpaint",
        display_name="VAE Encode (for Inpainting)",
        category="model/latent",
        inputs=(
            Link("pixels", "IMAGE"),
            Link("vae", "VAE"),
            Link("mask", "MASK"),
            Int("grow_mask_by", default=6, min=0, max=64, step=1),
        ),
        outputs=(Output("LATENT"),),
    )

    def execute(
        self, ctx: NodeContext, pixels: torch.Tensor, vae: Any, mask: torch.Tensor, grow_mask_by: int = 6
    ) -> tuple[dict]:
        pixels, mask = _crop_pair(pixels, mask, 8, "VAEEncodeForInpaint")
        noise_mask = mask.round()
        if grow_mask_by:  # ComfyUI: a box filter of the rounded mask, clamped (a square dilation)
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            grown = torch.nn.functional.conv2d(noise_mask, kernel, padding=grow_mask_by // 2)
            noise_mask = grown.clamp(0, 1)[:, :, : mask.shape[2], : mask.shape[3]].round()
        latent = require_engine(ctx).encode(vae, masks.neutral_fill(pixels, mask))
        return ({"samples": latent, "noise_mask": noise_mask},)


class InpaintModelConditioning(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="InpaintModelConditioning",
        category="model/conditioning",
        inputs=(
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("vae", "VAE"),
            Link("pixels", "IMAGE"),
            Link("mask", "MASK"),
            Boolean(
                "noise_mask",
                default=True,
                tooltip="Add a noise mask to the latent so sampling will only happen within the mask. "
                "Might improve results or completely break things depending on the model.",
            ),
        ),
        outputs=(
            Output("CONDITIONING", "positive"),
            Output("CONDITIONING", "negative"),
            Output("LATENT", "latent"),
        ),
    )

    def execute(
        self, ctx: NodeContext, positive: Any, negative: Any, vae: Any, pixels: torch.Tensor,
        mask: torch.Tensor, noise_mask: bool = True,
    ) -> tuple[Any, Any, dict]:  # fmt: skip
        pixels, cropped_mask = _crop_pair(pixels, mask, 8, "InpaintModelConditioning")
        latent: dict[str, Any] = {"samples": require_engine(ctx).encode(vae, pixels)}
        if noise_mask:
            latent["noise_mask"] = cropped_mask
        return (positive, negative, latent)


class ImageCompositeMasked(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageCompositeMasked",
        category="image/compositing",
        style="v3",
        python_module="comfy_extras.nodes_mask",
        inputs=(
            Link("destination", "IMAGE"),
            Link("source", "IMAGE"),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Boolean("resize_source", default=False),
            Link("mask", "MASK", optional=True),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(
        self, ctx: NodeContext, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
        resize_source: bool, mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor]:  # fmt: skip
        source = _with_channels(source, destination.shape[-1])  # an RGB/RGBA mix: opaque alpha
        if mask is not None:
            size = destination.shape[1:3] if resize_source else source.shape[1:3]
            masks.check_shape(mask, size[1], size[0], "ImageCompositeMasked: mask", "the source image")
        out = masks.composite(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)


def _with_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.shape[-1] >= channels:
        return image[..., :channels]
    pad = torch.ones((*image.shape[:-1], channels - image.shape[-1]), dtype=image.dtype)
    return torch.cat([image, pad], dim=-1)


class GrowMask(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="GrowMask",
        display_name="Grow Mask",
        category="mask",
        style="v3",
        python_module="comfy_extras.nodes_mask",
        inputs=(
            Link("mask", "MASK"),
            Int("expand", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
            Boolean("tapered_corners", default=True),
        ),
        outputs=(Output("MASK"),),
    )

    def execute(self, ctx: NodeContext, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple:
        return (masks.grow(mask, expand, tapered_corners),)


class MaskToImage(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="MaskToImage",
        display_name="Convert Mask to Image",
        category="mask",
        style="v3",
        python_module="comfy_extras.nodes_mask",
        inputs=(Link("mask", "MASK"),),
        outputs=(Output("IMAGE"),),
    )

    def execute(self, ctx: NodeContext, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (masks.as_batch(mask)[..., None].expand(-1, -1, -1, 3),)


class ImageToMask(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageToMask",
        display_name="Convert Image to Mask",
        category="mask",
        style="v3",
        python_module="comfy_extras.nodes_mask",
        inputs=(Link("image", "IMAGE"), Combo("channel", ("red", "green", "blue", "alpha"))),
        outputs=(Output("MASK"),),
    )

    def execute(self, ctx: NodeContext, image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
        index = ("red", "green", "blue", "alpha").index(channel)
        if index >= image.shape[-1]:
            raise InputError(f"ImageToMask: the image has no {channel} channel")
        return (image[..., index],)


NODES = (
    LoadImageMask, SetLatentNoiseMask, VAEEncodeForInpaint, InpaintModelConditioning, ImageCompositeMasked,
    GrowMask, MaskToImage, ImageToMask,
)  # fmt: skip
