"""Model loaders: pick a file from the models folder, hand it to the engine.

Their outputs are cached by the executor like any node's, which is what keeps models loaded between
prompts that use the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.schema import Combo, NodeSchema, Output

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext, NodeContext

CLIP_TYPES = (
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
    "flux2",
    "ovis",
    "longcat_image",
)
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
CLIP_DESCRIPTION = (
    "[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\n"
    "stable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n"
    " hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B"
)


def model_files(folder: str) -> Callable[[ExecutionContext | None], list[str]]:
    """Option source listing a model folder at request time (empty without a context)."""

    def options(ctx: ExecutionContext | None) -> list[str]:
        return ctx.list_models(folder) if ctx is not None else []

    return options


class UNETLoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="UNETLoader",
        display_name="Load Diffusion Model",
        category="advanced/loaders",
        inputs=(
            Combo("unet_name", model_files("diffusion_models")),
            Combo("weight_dtype", WEIGHT_DTYPES, advanced=True),
        ),
        outputs=(Output("MODEL"),),
    )

    def execute(self, ctx: NodeContext, unet_name: str, weight_dtype: str = "default") -> tuple[Any]:
        path = ctx.execution.resolve_model("diffusion_models", unet_name)
        return (require_engine(ctx).load_dit(path, weight_dtype),)


class CLIPLoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="CLIPLoader",
        display_name="Load CLIP",
        category="advanced/loaders",
        description=CLIP_DESCRIPTION,
        inputs=(
            Combo("clip_name", model_files("text_encoders")),
            Combo("type", CLIP_TYPES),
            Combo("device", ("default", "cpu"), optional=True, advanced=True),
        ),
        outputs=(Output("CLIP"),),
    )

    def execute(
        self,
        ctx: NodeContext,
        clip_name: str,
        type: str = "lumina2",
        device: str = "default",  # noqa: A002
    ) -> tuple[Any]:
        # `type` names the model family for ComfyUI; Z-Image's Qwen3 encoder is what we load whatever
        # it says ("lumina2" in the official templates), so the choice is accepted and not needed.
        path = ctx.execution.resolve_model("text_encoders", clip_name)
        return (require_engine(ctx).load_text_encoder(path, device),)


class VAELoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="VAELoader",
        display_name="Load VAE",
        category="loaders",
        inputs=(Combo("vae_name", model_files("vae")),),
        outputs=(Output("VAE"),),
    )

    def execute(self, ctx: NodeContext, vae_name: str) -> tuple[Any]:
        path = ctx.execution.resolve_model("vae", vae_name)
        return (require_engine(ctx).load_vae(path),)


NODES = (UNETLoader, CLIPLoader, VAELoader)
