"""Text conditioning nodes: prompt encoding and the zeroed negative the turbo template uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from zturbo.models.prompt_enhancer import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_CAP
from zturbo.nodes.base import Node, NodeOutput, require_engine
from zturbo.nodes.schema import Int, Link, NodeSchema, Output, String
from zturbo.sampling.noise import SEED_MAX

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


ENHANCE_EVENT = "zturbo_enhance"  # WebSocket event: {prompt_id, node, text: the next piece of the text}


class ZTurboPromptEnhance(Node):
    """A short idea → a detailed image prompt, written by the CLIP's own Qwen3 weights as a causal LM
    (`Engine.enhance_prompt`). Its text is streamed to the client as `zturbo_enhance` events and shown
    on the node; the STRING output feeds a CLIPTextEncode."""

    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ZTurboPromptEnhance",
        display_name="Prompt Enhance (zturbo)",
        category="zturbo/text",
        style="v3",
        python_module="custom_nodes.zturbo",
        description="Rewrites a short idea into a detailed visual description with the loaded Qwen3 text encoder.",
        inputs=(
            Link("clip", "CLIP", tooltip="The Z-Image text encoder (Qwen3-4B): it writes the description."),
            String("text", multiline=True, dynamic_prompts=True, tooltip="The idea, in any language."),
            Int("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                tooltip="Sampling seed: the same seed gives the same text."),
            Int("max_tokens", default=DEFAULT_MAX_NEW_TOKENS, min=1, max=MAX_NEW_TOKENS_CAP, tooltip="At most this many generated tokens."),
            String("system", multiline=True, default="", optional=True,
                   tooltip="Your own system prompt; empty: zturbo's (a detailed visual description in the "
                   "language of the idea)."),
        ),
        outputs=(Output("STRING", "prompt"),),
        output_node=True,
    )  # fmt: skip

    def execute(
        self, ctx: NodeContext, clip: Any, text: str, seed: int, max_tokens: int, system: str = ""
    ) -> NodeOutput:
        pieces = 0

        def on_token(piece: str) -> None:
            nonlocal pieces
            pieces += 1  # a piece is one token, or a few that complete a character
            ctx.event(ENHANCE_EVENT, {"text": piece})
            ctx.progress(min(pieces, max_tokens), max_tokens)  # also where an interrupt stops it

        prompt = require_engine(ctx).enhance_prompt(
            clip, text, seed=seed, max_tokens=max_tokens, system=system or None, on_token=on_token
        )
        return NodeOutput(prompt, ui={"text": [prompt]})


NODES = (CLIPTextEncode, ConditioningZeroOut, ZTurboPromptEnhance)
