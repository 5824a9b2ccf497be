"""Small image nodes: batching, cropping, inverting, a solid-colour image, and ImageCompare's previews.
IMAGE is [B, H, W, C] in 0..1."""

from __future__ import annotations

import random
import string
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812

from zturbo.nodes.base import Node, NodeOutput
from zturbo.nodes.image import crop_image
from zturbo.nodes.io import save_images
from zturbo.nodes.schema import EXTRA_PNGINFO, PROMPT, InputSpec, Int, Link, NodeSchema, Output
from zturbo.resize import common_upscale

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext

MAX_RESOLUTION = 16384


class ImageBatch(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageBatch",
        display_name="Batch Images (DEPRECATED)",
        category="image/batch",
        inputs=(Link("image1", "IMAGE"), Link("image2", "IMAGE")),
        outputs=(Output("IMAGE"),),
    )

    def execute(self, ctx: NodeContext, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor]:
        # A missing alpha channel is added as opaque; image2 is resized (bilinear, centre crop) to image1.
        if image1.shape[-1] > image2.shape[-1]:
            image2 = F.pad(image2, (0, 1), mode="constant", value=1.0)
        elif image1.shape[-1] < image2.shape[-1]:
            image1 = F.pad(image1, (0, 1), mode="constant", value=1.0)
        if image1.shape[1:] != image2.shape[1:]:
            resized = common_upscale(
                image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bilinear", "center"
            )
            image2 = resized.movedim(1, -1)
        return (torch.cat((image1, image2), dim=0),)


class ImageCrop(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageCrop",
        display_name="Crop Image (DEPRECATED)",
        category="image/transform",
        style="v3",
        python_module="comfy_extras.nodes_images",
        inputs=(
            Link("image", "IMAGE"),
            Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(
        self, ctx: NodeContext, image: torch.Tensor, width: int, height: int, x: int, y: int
    ) -> tuple[torch.Tensor]:
        return (crop_image(image, width, height, x, y),)


class ImageInvert(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageInvert",
        display_name="Invert Image Colors",
        category="image/color",
        inputs=(Link("image", "IMAGE"),),
        outputs=(Output("IMAGE"),),
    )

    def execute(self, ctx: NodeContext, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - image,)


class EmptyImage(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="EmptyImage",
        display_name="Empty Image",
        category="image",
        inputs=(
            Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("batch_size", default=1, min=1, max=4096),
            Int("color", default=0, min=0, max=0xFFFFFF, step=1, display="color"),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(
        self, ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0
    ) -> tuple[torch.Tensor]:
        channels = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]  # 0xRRGGBB
        planes = [torch.full([batch_size, height, width, 1], c, dtype=torch.float32) for c in channels]
        return (torch.cat(planes, dim=-1),)


def _preview_suffix() -> str:
    return "".join(random.choice(string.ascii_lowercase) for _ in range(5))


class ImageCompare(Node):
    """Saves both batches as temp previews for the editor's comparison slider; outputs nothing."""

    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageCompare",
        display_name="Compare Images",
        category="image",
        description="Compares two images side by side with a slider.",
        style="v3",
        python_module="comfy_extras.nodes_image_compare",
        inputs=(
            Link("image_a", "IMAGE", optional=True),
            Link("image_b", "IMAGE", optional=True),
            InputSpec("compare_view", "IMAGECOMPARE", socketless=True),
        ),
        output_node=True,
        hidden=(PROMPT, EXTRA_PNGINFO),
    )

    def execute(
        self,
        ctx: NodeContext,
        image_a: torch.Tensor | None = None,
        image_b: torch.Tensor | None = None,
        **_: object,
    ) -> NodeOutput:
        ui: dict[str, list] = {"a_images": [], "b_images": []}
        for key, images, prefix in (
            ("a_images", image_a, "comfy.compare.a"),
            ("b_images", image_b, "comfy.compare.b"),
        ):
            if images is not None and len(images) > 0:
                ui[key] = save_images(
                    ctx, images, f"{prefix}_temp_{_preview_suffix()}", "temp", compress_level=1
                )
        return NodeOutput(ui=ui)


NODES = (ImageBatch, ImageCrop, ImageInvert, EmptyImage, ImageCompare)
