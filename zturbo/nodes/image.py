"""Image utility nodes: resizing, cropping, blurring, sizes and resolution arithmetic, the compare view.
IMAGE is [B, H, W, C] in 0..1."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch

from zturbo import masks
from zturbo.nodes.base import Node
from zturbo.nodes.schema import (
    UNIQUE_ID,
    Combo,
    Float,
    Int,
    Link,
    NodeSchema,
    Output,
)
from zturbo.resize import common_upscale

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
# As declared by ComfyUI, duplicate included: the frontend shows exactly this list.
MAX_DIMENSION_METHODS = ("area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic")
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1),
    "2:3 (Portrait Photo)": (2, 3),
    "3:2 (Photo)": (3, 2),
    "3:4 (Portrait Standard)": (3, 4),
    "4:3 (Standard)": (4, 3),
    "9:16 (Portrait Widescreen)": (9, 16),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
}


def resize_image(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    samples = image.movedim(-1, 1)
    return common_upscale(samples, int(width), int(height), method, crop).movedim(1, -1)


def scale_image(image: torch.Tensor, method: str, width: int, height: int, crop: str) -> torch.Tensor:
    """ImageScale: to width×height (0 = keep the aspect ratio from the other side); crop="center" first
    crops to the target's aspect ratio, so the image covers the target without distortion."""
    if width == 0 and height == 0:
        return image
    if width == 0:
        width = max(1, round(image.shape[2] * height / image.shape[1]))
    elif height == 0:
        height = max(1, round(image.shape[1] * width / image.shape[2]))
    return resize_image(image, width, height, method, crop)


def crop_image(image: torch.Tensor, width: int, height: int, x: int, y: int) -> torch.Tensor:
    """ImageCrop: a width×height window at (x, y), clipped to the image (x, y at most the last pixel)."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return image[:, y : y + height, x : x + width, :]


class ImageScale(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageScale",
        display_name="Upscale Image",
        category="image/upscaling",
        inputs=(
            Link("image", "IMAGE"),
            Combo("upscale_method", UPSCALE_METHODS),
            Int("width", default=512, min=0, max=MAX_RESOLUTION, step=1),
            Int("height", default=512, min=0, max=MAX_RESOLUTION, step=1),
            Combo("crop", ("disabled", "center")),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(
        self, ctx: NodeContext, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple:
        return (scale_image(image, upscale_method, width, height, crop),)


class ImageBlur(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageBlur",
        category="image/postprocessing",
        style="v3",
        python_module="comfy_extras.nodes_post_processing",
        inputs=(
            Link("image", "IMAGE"),
            Int("blur_radius", default=1, min=1, max=31, step=1),
            Float("sigma", default=1.0, min=0.1, max=10.0, step=0.1),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(self, ctx: NodeContext, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple:
        return (masks.blur_image(image, blur_radius, sigma),)


class ImageScaleBy(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageScaleBy",
        display_name="Upscale Image By",
        category="image/upscaling",
        inputs=(
            Link("image", "IMAGE"),
            Combo("upscale_method", UPSCALE_METHODS),
            Float("scale_by", default=1.0, min=0.01, max=8.0, step=0.01),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(self, ctx: NodeContext, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple:
        width = round(image.shape[2] * scale_by)
        height = round(image.shape[1] * scale_by)
        return (resize_image(image, width, height, upscale_method),)


class ImageScaleToTotalPixels(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageScaleToTotalPixels",
        display_name="Scale Image to Total Pixels",
        category="image/upscaling",
        style="v3",
        python_module="comfy_extras.nodes_post_processing",
        inputs=(
            Link("image", "IMAGE"),
            Combo("upscale_method", UPSCALE_METHODS),
            Float("megapixels", default=1.0, min=0.01, max=16.0, step=0.01),
            Int("resolution_steps", default=1, min=1, max=256, advanced=True),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(
        self,
        ctx: NodeContext,
        image: torch.Tensor,
        upscale_method: str,
        megapixels: float,
        resolution_steps: int = 1,
    ) -> tuple:
        scale = math.sqrt(megapixels * 1024 * 1024 / (image.shape[2] * image.shape[1]))
        width = round(image.shape[2] * scale / resolution_steps) * resolution_steps
        height = round(image.shape[1] * scale / resolution_steps) * resolution_steps
        return (resize_image(image, width, height, upscale_method),)


class ImageScaleToMaxDimension(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageScaleToMaxDimension",
        display_name="Scale Image to Max Dimension",
        category="image/upscaling",
        style="v3",
        python_module="comfy_extras.nodes_images",
        inputs=(
            Link("image", "IMAGE"),
            Combo("upscale_method", MAX_DIMENSION_METHODS),
            Int("largest_size", default=512, min=0, max=MAX_RESOLUTION, step=1),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(self, ctx: NodeContext, image: torch.Tensor, upscale_method: str, largest_size: int) -> tuple:
        height, width = image.shape[1], image.shape[2]
        if height > width:
            width, height = round(width / height * largest_size), largest_size
        elif width > height:
            width, height = largest_size, round(height / width * largest_size)
        else:
            width = height = largest_size
        return (resize_image(image, width, height, upscale_method),)


class GetImageSize(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="GetImageSize",
        display_name="Get Image Size",
        category="image",
        description="Returns width and height of the image, and passes it through unchanged.",
        style="v3",
        python_module="comfy_extras.nodes_images",
        inputs=(Link("image", "IMAGE"),),
        outputs=(Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size")),
        hidden=(UNIQUE_ID,),
    )

    def execute(self, ctx: NodeContext, image: torch.Tensor) -> tuple[int, int, int]:
        return (int(image.shape[2]), int(image.shape[1]), int(image.shape[0]))


class ResolutionSelector(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ResolutionSelector",
        display_name="Resolution Selector",
        category="utilities",
        description=(
            "Calculate width and height from aspect ratio and megapixel target. "
            "Useful for setting up Empty Latent Image dimensions."
        ),
        style="v3",
        python_module="comfy_extras.nodes_resolution",
        inputs=(
            Combo(
                "aspect_ratio",
                tuple(ASPECT_RATIOS),
                default="1:1 (Square)",
                tooltip="The aspect ratio for the output dimensions.",
            ),
            Float(
                "megapixels",
                default=1.0,
                min=0.1,
                max=16.0,
                step=0.1,
                tooltip="Target total megapixels. 1.0 MP ≈ 1024x1024 for square.",
            ),
            Int(
                "multiple",
                default=8,
                min=8,
                max=128,
                step=4,
                advanced=True,
                tooltip="Nearest multiple of the result to set the selected resolution to.",
            ),
        ),
        outputs=(
            Output("INT", "width", tooltip="Calculated width in pixels multiplied by the selected multiple."),
            Output(
                "INT", "height", tooltip="Calculated height in pixels multiplied by the selected multiple."
            ),
        ),
    )

    def execute(self, ctx: NodeContext, aspect_ratio: str, megapixels: float, multiple: int = 8) -> tuple:
        w_ratio, h_ratio = ASPECT_RATIOS[aspect_ratio]
        scale = math.sqrt(megapixels * 1024 * 1024 / (w_ratio * h_ratio))
        width = round(w_ratio * scale / multiple) * multiple
        height = round(h_ratio * scale / multiple) * multiple
        return (width, height)


NODES = (
    ImageScaleBy, ImageScaleToTotalPixels, ImageScaleToMaxDimension, GetImageSize, ResolutionSelector, ImageScale,
    ImageBlur,
)  # fmt: skip
