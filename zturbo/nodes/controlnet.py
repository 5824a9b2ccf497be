"""ControlNet nodes, as ComfyUI declares them: ModelPatchLoader, ZImageFunControlnet,
QwenImageDiffsynthControlnet (which ComfyUI also routes Z-Image ControlNets through: the official
template uses it) and the Canny preprocessor.

ModelPatchLoader lists `models/model_patches/` (ComfyUI's folder for these files) and, after it,
`models/controlnet/`; a file is recognised by its content and refused, naming what it is, when it is
not a Z-Image Fun ControlNet. The appliers return a new MODEL carrying the ControlNet (the input
MODEL is unchanged), as ComfyUI's `model.clone()` + patch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from zturbo.errors import MissingModelError
from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.schema import Combo, Float, Link, NodeSchema, Output
from zturbo.preprocess.canny import canny_image

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext, NodeContext

PATCH_FOLDERS = ("model_patches", "controlnet")


def patch_files(ctx: ExecutionContext | None) -> list[str]:
    if ctx is None:
        return []
    names = ctx.list_models(PATCH_FOLDERS[0])
    return names + [n for n in ctx.list_models(PATCH_FOLDERS[1]) if n not in names]


class ModelPatchLoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ModelPatchLoader",
        category="model/loaders",
        python_module="comfy_extras.nodes_model_patch",
        inputs=(Combo("name", patch_files),),
        outputs=(Output("MODEL_PATCH"),),
    )

    def execute(self, ctx: NodeContext, name: str) -> tuple[Any]:
        path = None
        for folder in PATCH_FOLDERS:
            try:
                path = ctx.execution.resolve_model(folder, name)
                break
            except MissingModelError:
                continue
        if path is None:
            searched = ", ".join(str(d) for f in PATCH_FOLDERS for d in ctx.execution.model_dirs(f))
            raise MissingModelError(f"ModelPatchLoader: model patch {name!r} not found in {searched}")
        return (require_engine(ctx).load_controlnet(path),)


def _apply(ctx: NodeContext, model: Any, model_patch: Any, vae: Any, strength: float, **images: Any) -> tuple:
    images = {k: (v[..., :3] if k != "mask" and v is not None else v) for k, v in images.items()}
    return (require_engine(ctx).apply_controlnet(model, model_patch, vae, strength, **images),)


STRENGTH = Float("strength", default=1.0, min=-10.0, max=10.0, step=0.01)


class QwenImageDiffsynthControlnet(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="QwenImageDiffsynthControlnet",
        category="model/patch/qwen",
        python_module="comfy_extras.nodes_model_patch",
        inputs=(
            Link("model", "MODEL"),
            Link("model_patch", "MODEL_PATCH"),
            Link("vae", "VAE"),
            Link("image", "IMAGE"),
            STRENGTH,
            Link("mask", "MASK", optional=True),
        ),
        outputs=(Output("MODEL"),),
    )

    def execute(
        self, ctx: NodeContext, model: Any, model_patch: Any, vae: Any, image: torch.Tensor,
        strength: float = 1.0, mask: torch.Tensor | None = None,
    ) -> tuple:  # fmt: skip
        return _apply(ctx, model, model_patch, vae, strength, image=image, mask=mask)


class ZImageFunControlnet(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ZImageFunControlnet",
        category="model/patch/z-image",
        python_module="comfy_extras.nodes_model_patch",
        inputs=(
            Link("model", "MODEL"),
            Link("model_patch", "MODEL_PATCH"),
            Link("vae", "VAE"),
            STRENGTH,
            Link("image", "IMAGE", optional=True),
            Link("inpaint_image", "IMAGE", optional=True),
            Link("mask", "MASK", optional=True),
        ),
        outputs=(Output("MODEL"),),
    )

    def execute(
        self, ctx: NodeContext, model: Any, model_patch: Any, vae: Any, strength: float = 1.0,
        image: torch.Tensor | None = None, inpaint_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple:  # fmt: skip
        return _apply(
            ctx, model, model_patch, vae, strength, image=image, inpaint_image=inpaint_image, mask=mask
        )


class Canny(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="Canny",
        category="image/filters",
        style="v3",
        python_module="comfy_extras.nodes_canny",
        inputs=(
            Link("image", "IMAGE"),
            Float("low_threshold", default=0.4, min=0.01, max=0.99, step=0.01),
            Float("high_threshold", default=0.8, min=0.01, max=0.99, step=0.01),
        ),
        outputs=(Output("IMAGE"),),
    )

    def execute(
        self, ctx: NodeContext, image: torch.Tensor, low_threshold: float = 0.4, high_threshold: float = 0.8
    ) -> tuple[torch.Tensor]:
        return (canny_image(image, low_threshold, high_threshold),)


NODES = (ModelPatchLoader, QwenImageDiffsynthControlnet, ZImageFunControlnet, Canny)
