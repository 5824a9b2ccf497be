"""Text conditioning nodes: prompt encoding and the zeroed negative the turbo template uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.schema import Link, NodeSchema, Output, String

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext


class CLIPTextEncode(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="CLIPTextEncode",
        display_name="CLIP Text Encode (Prompt)",
        category="model/conditioning",
        description=(
            "Encodes a text prompt using a CLIP model into an embedding that can be used to guide "
            "the diffusion model towards generating specific images."
        ),
        inputs=(
            String("text", multiline=True, dynamic_prompts=True, tooltip="The text to be encoded."),
            Link("clip", "CLIP", tooltip="The CLIP model used for encoding the text."),
        ),
        outputs=(
            Output(
                "CONDITIONING",
                tooltip="A conditioning containing the embedded text used to guide the diffusion model.",
            ),
        ),
    )

    def execute(self, ctx: NodeContext, clip: Any, text: str) -> tuple[Any]:
        return (require_engine(ctx).encode_text(clip, text),)


class ConditioningZeroOut(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ConditioningZeroOut",
        category="model/conditioning/transform",
        inputs=(Link("conditioning", "CONDITIONING"),),
        outputs=(Output("CONDITIONING"),),
    )

    def execute(self, ctx: NodeContext, conditioning: Any) -> tuple[Any]:
        return (require_engine(ctx).zero_conditioning(conditioning),)


NODES = (CLIPTextEncode, ConditioningZeroOut)
