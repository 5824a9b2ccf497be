"""Nodes that read and write image files: SaveImage, SaveImageAdvanced, PreviewImage, LoadImage.

Every path comes from the prompt, so every path goes through `zturbo.paths` (via the context's
`resolve_annotated`) or `zturbo.output.naming`, which refuse anything that would leave the input,
output or temp folder.
"""

from __future__ import annotations

import hashlib
import random
import string
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from zturbo.errors import InputError
from zturbo.images import image_size, load_image
from zturbo.nodes.base import Node, NodeOutput
from zturbo.nodes.saving import png_text, write_batch, write_png8, write_png16
from zturbo.nodes.schema import (
    EXTRA_PNGINFO,
    PROMPT,
    Combo,
    DynamicCombo,
    DynamicOption,
    Link,
    NodeSchema,
    Output,
    String,
)
from zturbo.output.naming import SAVE_IMAGE_PATTERN, save_target

if TYPE_CHECKING:
    from pathlib import Path

    from zturbo.nodes.context import ExecutionContext, NodeContext

SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."
PREFIX_TOOLTIP = (
    "The prefix for the file to save. This may include formatting information such as "
    "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."
)


def save_images(
    ctx: NodeContext, images: torch.Tensor, prefix: str, kind: str, *, compress_level: int = 4
) -> list[dict[str, str]]:
    """Write each image as `{stem}_{counter:05}_.png` with ComfyUI's chunks; return the ui entries."""
    target = save_target(ctx.execution.folder(kind), prefix, int(images.shape[2]), int(images.shape[1]))
    text = png_text(ctx.prompt, ctx.extra_pnginfo)
    return write_batch(
        images,
        target,
        kind,
        SAVE_IMAGE_PATTERN,
        lambda img, path: write_png8(img, path, text, compress_level),
    )


class SaveImage(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="SaveImage",
        display_name="Save Image",
        category="image",
        description=SAVE_DESCRIPTION,
        inputs=(
            Link("images", "IMAGE", tooltip="The images to save."),
            String("filename_prefix", default="ComfyUI", tooltip=PREFIX_TOOLTIP),
        ),
        outputs=(Output("IMAGE", "images"),),  # passed on, as in ComfyUI v0.33
        output_node=True,
        hidden=(PROMPT, EXTRA_PNGINFO),
    )

    def execute(self, ctx: NodeContext, images: torch.Tensor, filename_prefix: str = "ComfyUI") -> NodeOutput:
        return NodeOutput(images, ui={"images": save_images(ctx, images, filename_prefix, "output")})


class PreviewImage(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="PreviewImage",
        display_name="Preview Image",
        category="image",
        description=SAVE_DESCRIPTION,
        inputs=(Link("images", "IMAGE"),),
        outputs=(Output("IMAGE", "images"),),
        output_node=True,
        hidden=(PROMPT, EXTRA_PNGINFO),
    )

    def execute(self, ctx: NodeContext, images: torch.Tensor) -> NodeOutput:
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        results = save_images(ctx, images, f"ComfyUI_temp_{suffix}", "temp", compress_level=1)
        return NodeOutput(images, ui={"images": results})


PNG_FORMAT = DynamicOption(
    "png",
    (
        Combo("bit_depth", ("8-bit", "16-bit"), default="8-bit", advanced=True),
        Combo("input_color_space", ("sRGB",), default="sRGB", advanced=True),
    ),
)


class SaveImageAdvanced(Node):
    """ComfyUI's newer save node; only its PNG format (8 or 16 bit) is offered here."""

    schema: ClassVar[NodeSchema] = NodeSchema(
        name="SaveImageAdvanced",
        display_name="Save Image (Advanced)",
        category="image",
        description=SAVE_DESCRIPTION,
        style="v3",
        python_module="comfy_extras.nodes_images",
        inputs=(
            Link("images", "IMAGE", tooltip="The images to save."),
            String("filename_prefix", default="ComfyUI", multiline=False, tooltip=PREFIX_TOOLTIP),
            DynamicCombo("format", (PNG_FORMAT,), tooltip="The file format in which to save the image."),
        ),
        outputs=(Output("IMAGE", "images"),),
        output_node=True,
        hidden=(PROMPT, EXTRA_PNGINFO),
    )

    def execute(
        self,
        ctx: NodeContext,
        images: torch.Tensor,
        filename_prefix: str,
        format: dict[str, Any],  # noqa: A002
    ) -> NodeOutput:
        if format.get("format") != "png":
            raise InputError(
                f"SaveImageAdvanced: format {format.get('format')!r} is not supported (png only)"
            )
        writer = write_png16 if format.get("bit_depth") == "16-bit" else write_png8
        width, height = int(images.shape[2]), int(images.shape[1])
        target = save_target(ctx.output_dir, filename_prefix, width, height, trailing=".")
        text = png_text(ctx.prompt, ctx.extra_pnginfo)
        results = write_batch(
            images, target, "output", "{stem}_{n:05}.png", lambda img, p: writer(img, p, text)
        )
        return NodeOutput(images, ui={"images": results})


def input_image_options(ctx: ExecutionContext | None) -> list[str]:
    return ctx.list_input_images() if ctx is not None else []


def read_image(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All same-sized frames of an image file as IMAGE [B,H,W,3] and MASK [B,H,W] (1 - alpha), through
    the checked open of `zturbo.images` (pixel cap, clear errors)."""
    return load_image(path, path.name)


class LoadImage(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="LoadImage",
        display_name="Load Image",
        category="image",
        inputs=(Combo("image", input_image_options, image_upload=True),),
        outputs=(Output("IMAGE"), Output("MASK")),
    )

    def execute(self, ctx: NodeContext, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = ctx.execution.resolve_annotated(image)
        if not path.is_file():
            raise InputError(f"LoadImage: {image!r} not found in the input folder")
        return read_image(path)

    @classmethod
    def is_changed(cls, ctx: ExecutionContext, image: str = "", **_: Any) -> str:
        """The file's hash: a changed file under the same name must not hit the cache."""
        digest = hashlib.sha256()
        with open(ctx.resolve_annotated(image), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @classmethod
    def validate_inputs(cls, ctx: ExecutionContext, image: str) -> bool | str:
        return check_input_image(ctx, image)


def check_input_image(ctx: ExecutionContext, image: str) -> bool | str:
    """LoadImage's and LoadImageMask's validation: the file exists and its header is that of an image
    of allowed size, so a non-image or a decompression bomb fails at POST /prompt, before any model loads."""
    try:
        path = ctx.resolve_annotated(image)
        if not path.is_file():
            return f"Invalid image file: {image}"
        image_size(path, image)
    except InputError as exc:
        return str(exc)
    return True


NODES = (SaveImage, SaveImageAdvanced, PreviewImage, LoadImage)
