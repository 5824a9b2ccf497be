"""ComfyUI's LoRA loaders: the MODEL (and CLIP) they return carry the file's patches; nothing is
computed until something runs the model (the engine then patches the live weights, see
zturbo/patches). Inputs, defaults and ranges as ComfyUI's `LoraLoader` / `LoraLoaderModelOnly`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.loaders import model_files
from zturbo.nodes.schema import Combo, Float, Link, NodeSchema, Output

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext


def _strength(name: str, tooltip: str) -> Any:
    return Float(name, default=1.0, min=-100.0, max=100.0, step=0.01, tooltip=tooltip)


LORA_NAME = Combo("lora_name", model_files("loras"), tooltip="The name of the LoRA.")
MODEL_STRENGTH = _strength(
    "strength_model", "How strongly to modify the diffusion model. This value can be negative."
)


LORA_MESSAGE = "zturbo_lora"  # the status message of each LoRA load (history + the client's WebSocket)


def _reporter(ctx: NodeContext, lora_name: str) -> Callable[[Any], None]:
    """Each load's report as a job message: format, counts, and every key that matched nothing."""

    def report(found: Any) -> None:
        unmatched = [key for key, _ in found.unmatched]
        ctx.message(
            LORA_MESSAGE,
            {
                "lora_name": lora_name,
                "summary": found.summary(),
                "report": found.lines(),
                "unmatched": unmatched,
            },
        )

    return report


class LoraLoader(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="LoraLoader",
        display_name="Load LoRA",
        category="model/loaders",
        description="LoRAs are used to modify diffusion and CLIP models, altering the way in which "
        "latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
        inputs=(
            Link("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
            Link("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
            LORA_NAME,
            MODEL_STRENGTH,
            _strength("strength_clip", "How strongly to modify the CLIP model. This value can be negative."),
        ),
        outputs=(
            Output("MODEL", tooltip="The modified diffusion model."),
            Output("CLIP", tooltip="The modified CLIP model."),
        ),
    )

    def execute(
        self,
        ctx: NodeContext,
        model: Any,
        clip: Any,
        lora_name: str,
        strength_model: float,
        strength_clip: float,
    ) -> tuple[Any, Any]:
        path = ctx.execution.resolve_model("loras", lora_name)
        return require_engine(ctx).load_lora(
            model, clip, path, strength_model, strength_clip, on_report=_reporter(ctx, lora_name)
        )


class LoraLoaderModelOnly(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="LoraLoaderModelOnly",
        display_name="LoraLoaderModelOnly",
        category="model/loaders",
        description="LoRAs are used to modify the diffusion model, altering the way in which latents are "
        "denoised such as applying styles. Multiple LoRA nodes can be linked together.",
        inputs=(
            Link("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
            LORA_NAME,
            MODEL_STRENGTH,
        ),
        outputs=(Output("MODEL", tooltip="The modified diffusion model."),),
    )

    def execute(self, ctx: NodeContext, model: Any, lora_name: str, strength_model: float) -> tuple[Any]:
        path = ctx.execution.resolve_model("loras", lora_name)
        patched, _ = require_engine(ctx).load_lora(
            model, None, path, strength_model, 0.0, on_report=_reporter(ctx, lora_name)
        )
        return (patched,)


NODES = (LoraLoader, LoraLoaderModelOnly)
