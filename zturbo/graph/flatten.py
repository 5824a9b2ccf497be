"""Flattening a UI workflow into executable nodes, following the frontend's link resolution.

Mirrors `ExecutableNodeDTO` in the ComfyUI frontend: subgraph instances expand into their inner
nodes with path ids (`57:27`), links are followed through subgraph input/output slots, Reroutes and
bypassed nodes, and a subgraph input with nothing connected outside falls back to the promoted
widget's value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from zturbo.errors import InputError

VIRTUAL_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
SUBGRAPH_INPUT = -10
SUBGRAPH_OUTPUT = -20
MODE_MUTED = 2
MODE_BYPASS = 4
MAX_DEPTH = 32


@dataclass(frozen=True)
class UILink:
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: str


@dataclass(frozen=True)
class LinkRef:
    """An API link: output `slot` of the executable node `node_id`."""

    node_id: str
    slot: int


@dataclass(frozen=True)
class WidgetValue:
    """A value standing in for a link (a PrimitiveNode, or a promoted subgraph widget)."""

    value: Any


Resolved = LinkRef | WidgetValue


def parse_links(raw: Any) -> dict[str, UILink]:
    """Links by id; the root graph stores arrays, subgraph definitions store objects."""
    links: dict[str, UILink] = {}
    for item in raw or []:
        if isinstance(item, dict):
            link = UILink(
                item["origin_id"],
                item["origin_slot"],
                item["target_id"],
                item["target_slot"],
                str(item.get("type", "")),
            )
            links[str(item["id"])] = link
        elif isinstance(item, (list, tuple)) and len(item) >= 5:
            links[str(item[0])] = UILink(
                item[1], item[2], item[3], item[4], str(item[5] if len(item) > 5 else "")
            )
    return links


def types_compatible(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection: wildcards, equal types, or overlapping comma-separated lists."""
    a = "" if a in (None, "*") else str(a)
    b = "" if b in (None, "*") else str(b)
    if not a or not b or a == b:
        return True
    set_a, set_b = set(a.lower().split(",")), set(b.lower().split(","))
    if len(set_a) == 1 and len(set_b) == 1:
        return set_a == set_b
    return bool(set_a & set_b)


class Scope:
    """One graph level: the root graph, or one subgraph instance's copy of its definition."""

    def __init__(
        self,
        nodes: list[dict],
        links: Any,
        path: tuple[str, ...] = (),
        *,
        definition: dict | None = None,
        instance: dict | None = None,
        parent: Scope | None = None,
    ) -> None:
        self.nodes = {str(n.get("id")): n for n in nodes}
        self.links = parse_links(links)
        self.path = path
        self.definition = definition
        self.instance = instance
        self.parent = parent
        self.overrides = proxy_overrides(self.instance) if self.instance is not None else {}

    def exec_id(self, node_id: Any) -> str:
        return ":".join((*self.path, str(node_id)))

    def link(self, link_id: Any) -> UILink:
        link = self.links.get(str(link_id))
        if link is None:
            where = f" in subgraph {self.definition.get('name', '')!r}" if self.definition else ""
            raise InputError(f"the workflow refers to link {link_id}, which does not exist{where}")
        return link


class Flattener:
    """Walks a UI workflow's graphs and resolves links to executable nodes."""

    def __init__(self, workflow: dict[str, Any]) -> None:
        subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.definitions = {sg.get("id"): sg for sg in subgraphs}
        self.root = Scope(workflow.get("nodes") or [], workflow.get("links"))
        self._children: dict[tuple[str, ...], Scope] = {}

    def is_subgraph(self, node: dict) -> bool:
        return node.get("type") in self.definitions

    def child(self, scope: Scope, instance: dict) -> Scope:
        path = (*scope.path, str(instance.get("id")))
        if path not in self._children:
            if len(path) > MAX_DEPTH:
                raise InputError(f"subgraphs nest deeper than {MAX_DEPTH} levels at node {':'.join(path)}")
            definition = self.definitions[instance["type"]]
            self._children[path] = Scope(
                definition.get("nodes") or [],
                definition.get("links"),
                path,
                definition=definition,
                instance=instance,
                parent=scope,
            )
        return self._children[path]

    def executable(self, scope: Scope | None = None) -> Iterator[tuple[Scope, dict]]:
        """Every node that becomes an API node: not virtual, muted or bypassed; subgraphs expanded."""
        scope = scope or self.root
        for node in scope.nodes.values():
            mode = node.get("mode", 0)
            if mode in (MODE_MUTED, MODE_BYPASS):
                continue
            if self.is_subgraph(node):
                yield from self.executable(self.child(scope, node))
            elif node.get("type") not in VIRTUAL_TYPES:
                yield scope, node

    def resolve_input(
        self, scope: Scope, node: dict, slot: int, visited: set | None = None
    ) -> Resolved | None:
        """What feeds input `slot` of `node`: a link to an executable node, a value, or nothing."""
        visited = set() if visited is None else visited
        key = ("in", scope.path, str(node.get("id")), slot)
        if key in visited:
            raise InputError(
                f"circular link while resolving input {slot} of node {scope.exec_id(node.get('id'))}"
            )
        visited.add(key)
        inputs = node.get("inputs") or []
        if slot >= len(inputs) or inputs[slot].get("link") is None:
            return None
        link = scope.link(inputs[slot]["link"])
        if link.origin_id == SUBGRAPH_INPUT and scope.definition is not None:
            return self._from_subgraph_input(scope, link.origin_slot, visited)
        origin = scope.nodes.get(str(link.origin_id))
        if origin is None:
            raise InputError(
                f"link {inputs[slot]['link']} starts at node {link.origin_id}, which does not exist"
            )
        return self.resolve_output(scope, origin, link.origin_slot, inputs[slot].get("type"), visited)

    def _from_subgraph_input(self, scope: Scope, index: int, visited: set) -> Resolved | None:
        """Leave the subgraph through its input slot `index` to whatever feeds the instance."""
        definition, instance, parent = scope.definition, scope.instance, scope.parent
        assert definition is not None and instance is not None and parent is not None
        declared = definition.get("inputs") or []
        if index >= len(declared):
            raise InputError(f"subgraph {definition.get('name', '')!r} has no input slot {index}")
        name = declared[index].get("name")
        instance_inputs = instance.get("inputs") or []
        position = next((i for i, inp in enumerate(instance_inputs) if inp.get("name") == name), None)
        if position is not None and instance_inputs[position].get("link") is not None:
            return self.resolve_input(parent, instance, position, visited)
        return promoted_value(instance, name)

    def resolve_output(
        self, scope: Scope, node: dict, slot: int, type_: Any, visited: set | None = None
    ) -> Resolved | None:
        """Follow output `slot` of `node` back to a real node: through bypasses, Reroutes, subgraphs."""
        visited = set() if visited is None else visited
        key = ("out", scope.path, str(node.get("id")), slot)
        if key in visited:
            raise InputError(
                f"circular link while resolving output {slot} of node {scope.exec_id(node.get('id'))}"
            )
        visited.add(key)
        if node.get("mode", 0) == MODE_BYPASS:
            index = bypass_input(node, slot, type_)
            return None if index < 0 else self.resolve_input(scope, node, index, visited)
        if self.is_subgraph(node):
            return self._from_subgraph_output(self.child(scope, node), slot, type_, visited)
        kind = node.get("type")
        if kind == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return WidgetValue(values[0]) if values else None
        if kind == "Reroute":
            return self.resolve_input(scope, node, slot, visited)
        if kind in VIRTUAL_TYPES:
            return None
        return LinkRef(scope.exec_id(node.get("id")), int(slot))

    def _from_subgraph_output(self, inner: Scope, slot: int, type_: Any, visited: set) -> Resolved | None:
        outputs = (inner.definition or {}).get("outputs") or []
        link_ids = outputs[slot].get("linkIds") if slot < len(outputs) else None
        if not link_ids:
            return None
        link = inner.link(link_ids[0])
        if link.origin_id == SUBGRAPH_INPUT:
            return self._from_subgraph_input(inner, link.origin_slot, visited)
        origin = inner.nodes.get(str(link.origin_id))
        if origin is None:
            raise InputError(f"subgraph output {slot} comes from node {link.origin_id}, which does not exist")
        return self.resolve_output(inner, origin, link.origin_slot, type_, visited)


def proxy_overrides(instance: dict) -> dict[tuple[str, str], Any]:
    """Values an instance stores for its promoted ("proxy") widgets: newer frontends list them in
    `properties.proxyWidgets` as `[inner_node_id, widget_name]`, with the values in the same order in
    the instance's `widgets_values`. Empty values mean the inner nodes' own values apply."""
    proxies = (instance.get("properties") or {}).get("proxyWidgets")
    values = instance.get("widgets_values")
    if not isinstance(proxies, list) or not isinstance(values, list):
        return {}
    pairs = [p for p in proxies if isinstance(p, (list, tuple)) and len(p) >= 2]
    return {(str(p[0]), str(p[1])): v for p, v in zip(pairs, values, strict=False) if str(p[0]) != "-1"}


def promoted_value(instance: dict, name: Any) -> WidgetValue | None:
    """The instance's own widget value for a subgraph input, if it stores one (older frontends kept
    promoted widget values in the instance's `widgets_values`, in widget-input order). Without one
    the inner node keeps its own widget value."""
    values = instance.get("widgets_values")
    if not isinstance(values, list) or not values or "proxyWidgets" in (instance.get("properties") or {}):
        return None
    widget_inputs = [inp.get("name") for inp in instance.get("inputs") or [] if inp.get("widget")]
    if name in widget_inputs and widget_inputs.index(name) < len(values):
        return WidgetValue(values[widget_inputs.index(name)])
    return None


def bypass_input(node: dict, slot: int, type_: Any) -> int:
    """The input a bypassed node passes through to output `slot` (frontend `#getBypassSlotIndex`):
    the same slot if its type fits, else the first input of exactly that type, else the first that fits."""
    inputs = node.get("inputs") or []
    outputs = node.get("outputs") or []
    out_type = outputs[slot].get("type") if slot < len(outputs) else None
    if type_ in ("*", "", None):
        return (slot if len(inputs) > slot else 0) if inputs else -1
    if slot < len(inputs):
        same = inputs[slot].get("type")
        if types_compatible(same, out_type) and types_compatible(same, type_):
            return slot
    for index, inp in enumerate(inputs):
        if inp.get("type") == type_:
            return index
    for index, inp in enumerate(inputs):
        if types_compatible(inp.get("type"), out_type) and types_compatible(inp.get("type"), type_):
            return index
    return -1
