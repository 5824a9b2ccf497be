"""How a UI node's positional `widgets_values` line up with its schema's inputs.

The frontend stores one value per widget, in input order (required, then optional), plus UI-only
values it never sends: the control_after_generate mode after seed-like INTs, the "upload" button
value after LoadImage's file name, and a dynamic combo's chosen option's own widgets after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zturbo.graph.flatten import proxy_overrides
from zturbo.nodes.schema import InputSpec, NodeSchema

if TYPE_CHECKING:
    from zturbo.nodes.registry import NodeRegistry


@dataclass(frozen=True)
class WidgetSlot:
    """Where one input's value sits in `widgets_values` (and its control mode, if it has one)."""

    name: str
    spec: InputSpec
    index: int
    control_index: int | None


def widget_slots(schema: NodeSchema, values: list[Any]) -> list[WidgetSlot]:
    """The slots present in `values`; a dynamic combo's children depend on the option it holds."""
    slots: list[WidgetSlot] = []
    pos = 0
    for spec in schema.widget_inputs():
        for name, child in _with_children(spec, values, pos):
            if pos >= len(values):
                return slots
            control = pos + 1 if child.has_control() else None
            slots.append(WidgetSlot(name, child, pos, control))
            pos += 1 + child.ui_extra_values()
    return slots


def _with_children(spec: InputSpec, values: list[Any], pos: int) -> Iterator[tuple[str, InputSpec]]:
    yield spec.name, spec
    if spec.is_dynamic and pos < len(values):
        chosen = spec.choice(values[pos])
        for child in chosen.inputs if chosen else ():
            if child.is_widget:
                yield f"{spec.name}.{child.name}", child


def widget_values_by_name(schema: NodeSchema, values: Any) -> dict[str, Any]:
    """`widgets_values` as `{input_name: value}`, UI-only values dropped. Accepts the dict form
    some nodes save as well as the usual list."""
    if isinstance(values, dict):
        names = {s.name for s in schema.widget_inputs()}
        return {k: v for k, v in values.items() if k in names or k.split(".")[0] in names}
    if not isinstance(values, list):
        return {}
    return {slot.name: values[slot.index] for slot in widget_slots(schema, values)}


def _find_ui_node(workflow: dict[str, Any], exec_id: str) -> tuple[list[dict], dict, list[dict]] | None:
    """The UI node an API id (`57:3`) came from, the node list it lives in, and the subgraph
    instances above it (outermost first)."""
    definitions = {d.get("id"): d for d in (workflow.get("definitions") or {}).get("subgraphs") or []}
    nodes = workflow.get("nodes") or []
    instances: list[dict] = []
    parts = exec_id.split(":")
    for depth, part in enumerate(parts):
        node = next((n for n in nodes if str(n.get("id")) == part), None)
        if node is None:
            return None
        if depth == len(parts) - 1:
            return nodes, node, instances
        definition = definitions.get(node.get("type"))
        if definition is None:
            return None
        instances.append(node)
        nodes = definition.get("nodes") or []
    return None


def _set_proxy_value(instance: dict[str, Any], inner_id: str, name: str, value: Any) -> None:
    pairs = [
        p for p in instance["properties"]["proxyWidgets"] if isinstance(p, (list, tuple)) and len(p) >= 2
    ]
    index = next(i for i, p in enumerate(pairs) if (str(p[0]), str(p[1])) == (inner_id, name))
    instance["widgets_values"][index] = value


def _primitive_feeding(nodes: list[dict[str, Any]], link: Any) -> dict[str, Any] | None:
    for candidate in nodes:
        if candidate.get("type") != "PrimitiveNode" or not candidate.get("widgets_values"):
            continue
        if any(link in (output.get("links") or []) for output in candidate.get("outputs") or []):
            return candidate
    return None


def set_widget_value(
    workflow: dict[str, Any], exec_id: str, name: str, value: Any, registry: NodeRegistry
) -> bool:
    """Write `value` into the UI widget behind API input `exec_id.name` (in place); False if there is none.

    Used so a PNG's `workflow` chunk shows what `zturbo run --set` actually ran. A widget fed by a
    PrimitiveNode gets the value on the primitive. Inside a subgraph the definition is shared, so
    every instance of it sees the new value.
    """
    found = _find_ui_node(workflow, exec_id)
    if found is None:
        return False
    nodes, node, instances = found
    if instances and (str(node.get("id")), name) in proxy_overrides(instances[-1]):
        _set_proxy_value(instances[-1], str(node.get("id")), name, value)
    link = next((s.get("link") for s in node.get("inputs") or [] if s.get("name") == name), None)
    primitive = _primitive_feeding(nodes, link) if link is not None else None
    if primitive is not None:
        primitive["widgets_values"][0] = value
        return True
    schema = registry.schema(str(node.get("type")))
    values = node.get("widgets_values")
    if schema is None or not isinstance(values, list):
        return False
    slot_for = next((s for s in widget_slots(schema, values) if s.name == name), None)
    if slot_for is None:
        return False
    values[slot_for.index] = value
    return True
