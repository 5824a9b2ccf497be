"""ComfyUI's executable primitive nodes (PrimitiveInt, PrimitiveString, ...).

These are real nodes that output a constant. The UI-only `PrimitiveNode` (which copies its value into
the widgets it feeds) is not one of them: the UI→API converter resolves it and it never reaches here.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, ClassVar

from zturbo.nodes.base import Node
from zturbo.nodes.schema import Boolean, Float, InputSpec, Int, NodeSchema, Output, String

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext


def _primitive(name: str, display: str, value: InputSpec, out_type: str) -> NodeSchema:
    return NodeSchema(
        name=name,
        display_name=display,
        category="utilities/primitive",
        style="v3",
        python_module="comfy_extras.nodes_primitive",
        inputs=(value,),
        outputs=(Output(out_type),),
    )


class _Constant(Node):
    def execute(self, ctx: NodeContext, value: Any) -> tuple[Any]:
        return (value,)


class PrimitiveString(_Constant):
    schema: ClassVar[NodeSchema] = _primitive(
        "PrimitiveString", "String", String("value", multiline=False), "STRING"
    )


class PrimitiveStringMultiline(_Constant):
    schema: ClassVar[NodeSchema] = _primitive(
        "PrimitiveStringMultiline", "String (Multiline)", String("value", multiline=True), "STRING"
    )


class PrimitiveInt(_Constant):
    schema: ClassVar[NodeSchema] = _primitive(
        "PrimitiveInt",
        "Int",
        Int("value", min=-sys.maxsize, max=sys.maxsize, control_after_generate="fixed"),
        "INT",
    )


class PrimitiveFloat(_Constant):
    schema: ClassVar[NodeSchema] = _primitive(
        "PrimitiveFloat", "Float", Float("value", min=-sys.maxsize, max=sys.maxsize, step=0.1), "FLOAT"
    )


class PrimitiveBoolean(_Constant):
    schema: ClassVar[NodeSchema] = _primitive("PrimitiveBoolean", "Boolean", Boolean("value"), "BOOLEAN")


NODES = (PrimitiveString, PrimitiveStringMultiline, PrimitiveInt, PrimitiveFloat, PrimitiveBoolean)
