"""UI workflow → API prompt, following the ComfyUI frontend's `graphToPrompt`.

For each executable node (see `flatten`): widget values become inputs by the schema's widget order,
then every connected input slot is resolved (links win over widget values, as in the frontend), and
finally inputs linked to nodes that were dropped (muted, missing) are removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zturbo.errors import InputError
from zturbo.graph.controls import apply_control_after_generate
from zturbo.graph.flatten import Flattener, LinkRef, Scope
from zturbo.graph.widgets import widget_values_by_name

if TYPE_CHECKING:
    from zturbo.nodes.registry import NodeRegistry


def _wrap(value: Any) -> Any:
    """Lists are links in API format; literal lists travel as `{"__value__": [...]}`."""
    return {"__value__": value} if isinstance(value, list) else value


def _api_node(flat: Flattener, scope: Scope, node: dict, registry: NodeRegistry) -> dict[str, Any]:
    class_type = str(node.get("type"))
    schema = registry.schema(class_type)
    inputs: dict[str, Any] = {}
    if schema is not None:
        for name, value in widget_values_by_name(schema, node.get("widgets_values")).items():
            inputs[name] = _wrap(value)
        widget_names = {spec.name for spec in schema.widget_inputs()}
        for (inner_id, name), value in scope.overrides.items():
            if inner_id == str(node.get("id")) and name in widget_names:
                inputs[name] = _wrap(value)
    for index, slot in enumerate(node.get("inputs") or []):
        if slot.get("link") is None:
            continue
        resolved = flat.resolve_input(scope, node, index)
        if isinstance(resolved, LinkRef):
            inputs[slot["name"]] = [resolved.node_id, resolved.slot]
        elif resolved is not None:
            inputs[slot["name"]] = _wrap(resolved.value)
    default_title = (schema.display_name or schema.name) if schema is not None else class_type
    return {
        "inputs": inputs,
        "class_type": class_type,
        "_meta": {"title": node.get("title") or default_title},
    }


def ui_to_api(workflow: dict[str, Any], registry: NodeRegistry) -> dict[str, Any]:
    """Convert a UI-format workflow (with subgraphs) into an API-format prompt.

    Unknown node types are kept with their linked inputs only, so validation reports them as
    ComfyUI does (`missing_node_type`) instead of the conversion failing obscurely.
    """
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise InputError("not a UI workflow: expected an object with a 'nodes' list")
    flat = Flattener(workflow)
    prompt: dict[str, Any] = {}
    for scope, node in flat.executable():
        prompt[scope.exec_id(node.get("id"))] = _api_node(flat, scope, node, registry)
    for node in prompt.values():
        dangling = [k for k, v in node["inputs"].items() if isinstance(v, list) and v[0] not in prompt]
        for name in dangling:
            del node["inputs"][name]
    return prompt


__all__ = ["apply_control_after_generate", "ui_to_api"]
