"""Utility nodes: text, the If/Else switch and PreviewAny (ComfyUI's nodes_string, nodes_logic,
nodes_preview_any)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from zturbo.nodes.base import Node, NodeOutput
from zturbo.nodes.schema import MATCH_TYPE, Boolean, InputSpec, Link, NodeSchema, Output, String

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext

SWITCH_TEMPLATE = (("template_id", "switch"), ("allowed_types", "*"))


class StringConcatenate(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="StringConcatenate",
        display_name="Concatenate Text",
        category="text",
        style="v3",
        python_module="comfy_extras.nodes_string",
        inputs=(
            String("string_a", multiline=True),
            String("string_b", multiline=True),
            String("delimiter", default="", multiline=False),
        ),
        outputs=(Output("STRING"),),
    )

    def execute(self, ctx: NodeContext, string_a: str, string_b: str, delimiter: str) -> tuple[str]:
        return (delimiter.join((string_a, string_b)),)


def _branch(name: str) -> InputSpec:
    return InputSpec(name, MATCH_TYPE, lazy=True, template=SWITCH_TEMPLATE)


class ComfySwitchNode(Node):
    """If/Else: passes on `on_true` or `on_false`; only the chosen branch's nodes run (lazy inputs)."""

    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ComfySwitchNode",
        display_name="If/Else Switch",
        category="utilities/logic",
        style="v3",
        python_module="comfy_extras.nodes_logic",
        inputs=(Boolean("switch"), _branch("on_false"), _branch("on_true")),
        outputs=(Output(MATCH_TYPE, "output"),),
    )

    @staticmethod
    def check_lazy_status(switch: bool, on_false: Any = None, on_true: Any = None, **_: Any) -> list[str]:
        if switch and on_true is None:
            return ["on_true"]
        if not switch and on_false is None:
            return ["on_false"]
        return []

    def execute(
        self, ctx: NodeContext, switch: bool, on_true: Any = None, on_false: Any = None
    ) -> tuple[Any]:
        return (on_true if switch else on_false,)


def preview_text(source: Any) -> str:
    """PreviewAny's text: strings as they are, numbers and booleans with str, the rest as indented
    JSON when it serialises, else str() (tensors print 6 edge items, as in ComfyUI)."""
    if isinstance(source, str):
        return source
    if isinstance(source, (int, float, bool)):
        return str(source)
    if source is None:
        return "None"
    try:
        return json.dumps(source, indent=4, ensure_ascii=False)
    except Exception:
        torch.set_printoptions(edgeitems=6)
        try:
            return str(source)
        except Exception:
            return "source exists, but could not be serialized."
        finally:
            torch.set_printoptions(edgeitems=3)


class PreviewAny(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="PreviewAny",
        display_name="Preview as Text",
        category="utilities",
        description="Preview any input value as text.",
        python_module="comfy_extras.nodes_preview_any",
        inputs=(Link("source", "*"),),
        outputs=(Output("STRING"),),
        output_node=True,
    )

    def execute(self, ctx: NodeContext, source: Any = None) -> NodeOutput:
        text = preview_text(source)
        return NodeOutput(text, ui={"text": [text]})


NODES = (StringConcatenate, ComfySwitchNode, PreviewAny)
