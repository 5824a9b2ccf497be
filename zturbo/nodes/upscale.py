"""Model upscaling: UpscaleModelLoader (spandrel, safely read files) and ImageUpscaleWithModel (tiled)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.loaders import model_files
from zturbo.nodes.schema import Combo, Link, NodeSchema, Output

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext


class UpscaleModelLoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="UpscaleModelLoader",
        display_name="Load Upscale Model",
        category="model/loaders",
        python_module="comfy_extras.nodes_upscale_model",
        inputs=(Combo("model_name", model_files("upscale_models")),),
        outputs=(Output("UPSCALE_MODEL"),),
    )

    def execute(self, ctx: NodeContext, model_name: str) -> tuple[Any]:
        path = ctx.execution.resolve_model("upscale_models", model_name)
        return (require_engine(ctx).load_upscale_model(path),)


class ImageUpscaleWithModel(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ImageUpscaleWithModel",
        display_name="Upscale Image (using Model)",
        category="image/upscaling",
        python_module="comfy_extras.nodes_upscale_model",
        inputs=(Link("upscale_model", "UPSCALE_MODEL"), Link("image", "IMAGE")),
        outputs=(Output("IMAGE"),),
    )

    def execute(self, ctx: NodeContext, upscale_model: Any, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (require_engine(ctx).upscale(upscale_model, image, progress=ctx.progress),)


NODES = (UpscaleModelLoader, ImageUpscaleWithModel)
