"""control_after_generate: how the frontend moves seed-like widgets after each Queue.

`zturbo run` executes the saved values (the frontend queues first, then applies the control);
`apply_control_after_generate` gives the workflow's state for the next run.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from zturbo.graph.widgets import widget_slots
from zturbo.nodes.schema import RANDOM_SEED_CAP, InputSpec

if TYPE_CHECKING:
    from zturbo.nodes.registry import NodeRegistry

CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")


def next_value(spec: InputSpec | None, value: Any, mode: str, rng: random.Random) -> Any:
    """The value a widget holds after the frontend applies its control mode once."""
    if mode not in CONTROL_MODES or mode == "fixed" or not isinstance(value, (int, float)):
        return value
    step = spec.step if spec is not None and spec.step else 1
    low = max(spec.min if spec is not None and spec.min is not None else 0, -RANDOM_SEED_CAP)
    high = min(spec.max if spec is not None and spec.max is not None else RANDOM_SEED_CAP, RANDOM_SEED_CAP)
    if mode == "increment":
        return min(high, value + step)
    if mode == "decrement":
        return max(low, value - step)
    result = int((rng.random() * (high - low)) // step) * step + low
    return int(result) if isinstance(value, int) else result


def _all_node_lists(workflow: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    yield workflow.get("nodes") or []
    for definition in (workflow.get("definitions") or {}).get("subgraphs") or []:
        yield definition.get("nodes") or []


def _primitive_target_spec(nodes: list[dict[str, Any]], node: dict[str, Any], registry: NodeRegistry) -> Any:
    """The input a PrimitiveNode feeds, for its range (the frontend copies the target's options)."""
    by_id = {str(n.get("id")): n for n in nodes}
    for output in node.get("outputs") or []:
        for target in by_id.values():
            for inp in target.get("inputs") or []:
                if inp.get("link") in (output.get("links") or []):
                    schema = registry.schema(str(target.get("type")))
                    return schema.get_input(inp.get("name", "")) if schema else None
    return None


def _advance_widgets(node: dict[str, Any], registry: NodeRegistry, rng: random.Random) -> None:
    values = node["widgets_values"]
    schema = registry.schema(str(node.get("type")))
    for slot in widget_slots(schema, values) if schema else []:
        if slot.control_index is not None and slot.control_index < len(values) and slot.spec.type == "INT":
            values[slot.index] = next_value(slot.spec, values[slot.index], values[slot.control_index], rng)


def _advance_proxies(
    instance: dict[str, Any], definitions: dict[Any, dict], registry: NodeRegistry, rng: random.Random
) -> None:
    """Promoted widgets whose values the instance stores (in `properties.proxyWidgets` order)."""
    values = instance.get("widgets_values")
    proxies = (instance.get("properties") or {}).get("proxyWidgets")
    definition = definitions.get(instance.get("type"))
    if not isinstance(values, list) or not values or not isinstance(proxies, list) or definition is None:
        return
    inner = {str(n.get("id")): n for n in definition.get("nodes") or []}
    pairs = [(str(p[0]), str(p[1])) for p in proxies if isinstance(p, (list, tuple)) and len(p) >= 2]
    index = {pair: i for i, pair in enumerate(pairs) if i < len(values)}
    for (inner_id, name), i in index.items():
        control = index.get((inner_id, "control_after_generate"))
        schema = registry.schema(str(inner.get(inner_id, {}).get("type")))
        spec = schema.get_input(name) if schema is not None else None
        if control is not None and spec is not None and spec.type == "INT" and spec.has_control():
            values[i] = next_value(spec, values[i], values[control], rng)


def apply_control_after_generate(
    workflow: dict[str, Any], registry: NodeRegistry, *, rng: random.Random | None = None
) -> dict[str, Any]:
    """The UI workflow as it stands after one Queue: every control_after_generate widget advanced
    (node widgets, PrimitiveNodes, and promoted widgets stored on subgraph instances).

    `zturbo run` executes the saved values first (the frontend queues, then applies the control),
    so this gives the state to use for a *next* run; the input is not modified.
    """
    rng = rng or random.Random()
    result = copy.deepcopy(workflow)
    definitions = {d.get("id"): d for d in (result.get("definitions") or {}).get("subgraphs") or []}
    for nodes in _all_node_lists(result):
        for node in nodes:
            values = node.get("widgets_values")
            if node.get("type") in definitions:
                _advance_proxies(node, definitions, registry, rng)
            elif node.get("type") == "PrimitiveNode" and isinstance(values, list) and len(values) >= 2:
                values[0] = next_value(
                    _primitive_target_spec(nodes, node, registry), values[0], values[1], rng
                )
            elif isinstance(values, list):
                _advance_widgets(node, registry, rng)
    return result
