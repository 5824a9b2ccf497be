"""Small shared helpers for API-format prompts: link detection, normalisation, value coercion.

Validation and execution must agree on what a link is, how a literal becomes an INT or FLOAT, and in
which order nodes depend on each other (`dependency_order`, iterative: no chain is too long, and a
cycle is named), so both use these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from zturbo.nodes.schema import MATCH_TYPE, InputSpec


def is_link(value: Any) -> bool:
    """ComfyUI's rule: any list is a link (`[node_id, slot]`); literal lists come wrapped in `__value__`."""
    return isinstance(value, list)


def unwrap(value: Any) -> Any:
    """Literal list values travel as `{"__value__": [...]}` so they are not taken for links."""
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    return value


def normalize_prompt(prompt: dict[str, Any]) -> dict[str, Any]:
    """A copy with string node ids and `[str(id), int(slot)]` links; values are not deep-copied.

    Some clients send numeric ids; accepting them costs nothing and ComfyUI's own frontend never does.
    """
    out: dict[str, Any] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            out[str(node_id)] = node
            continue
        inputs = node.get("inputs") or {}
        fixed = (
            {name: _normalize_link(value) for name, value in inputs.items()}
            if isinstance(inputs, dict)
            else {}
        )
        out[str(node_id)] = {**node, "inputs": fixed}
    return out


def _normalize_link(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], (int, float, str)):
        try:
            return [str(value[0]), int(value[1])]
        except (TypeError, ValueError):
            return value
    return value


def coerce(spec: InputSpec, value: Any) -> Any:
    """Convert a literal as ComfyUI does (`int(v)`, `float(v)`, `str(v)`, `bool(v)`); raises on failure."""
    value = unwrap(value)
    converters = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
    convert = converters.get(spec.type)
    return convert(value) if convert is not None else value


def types_match(received: str, expected: str) -> bool:
    """ComfyUI's `validate_node_input`: equal, a wildcard, or overlapping comma-separated type lists."""
    if received == expected or "*" in (received, expected) or MATCH_TYPE in (received, expected):
        return True
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def link_type(spec: InputSpec) -> str:
    """The type a link into this input must carry (widgets accept links of their own type)."""
    return "COMBO" if spec.is_combo or spec.is_dynamic else spec.type


def link_sources(node: Any) -> list[str]:
    """The node ids a node's inputs link to (`[id, slot]` lists), in input order."""
    inputs = node.get("inputs") if isinstance(node, dict) else None
    if not isinstance(inputs, dict):
        return []
    return [str(value[0]) for value in inputs.values() if is_link(value) and len(value) == 2]


class DependencyCycle(Exception):
    """Nodes that depend on their own output; `nodes` lists the cycle, its first node repeated last."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        path = " → ".join(f"'{n}'" for n in nodes)
        super().__init__(f"dependency cycle: nodes {path} (a node cannot depend on its own output)")


def dependency_order(
    prompt: dict[str, Any],
    roots: list[str],
    *,
    stop: Callable[[str], bool] = lambda node_id: False,
    skip: Collection[str] = (),
    sources: Callable[[str], list[str]] | None = None,
) -> list[str]:
    """The roots and every node they depend on, each after the nodes it reads from.

    Iterative (a chain of any length, no recursion limit). Links to ids not in the prompt are left to
    the caller to report. `stop(node)`: include the node but not what it depends on (a cached node);
    `skip`: nodes already handled, neither included nor explored. `sources(node)`: the nodes it reads
    from (default: every link; the executor leaves out lazy inputs). Raises `DependencyCycle`.
    """
    read = sources or (lambda node_id: link_sources(prompt[node_id]))
    order: list[str] = []
    done = set(skip)
    for root in roots:
        if root in done or root not in prompt:
            continue
        path, on_path = [root], {root}
        stack = [iter(() if stop(root) else read(root))]
        while stack:
            for source in stack[-1]:
                if source in done or source not in prompt:
                    continue
                if source in on_path:
                    raise DependencyCycle([*path[path.index(source) :], source])
                path.append(source)
                on_path.add(source)
                stack.append(iter(() if stop(source) else read(source)))
                break
            else:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                order.append(finished)
    return order
