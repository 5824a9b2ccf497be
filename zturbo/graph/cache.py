"""The output cache that survives between prompts, keyed like ComfyUI's input signatures.

A node's key hashes its class, its `is_changed` value and its inputs, where a linked input stands
for the *key of the node it comes from*. So a prompt that only changes the KSampler seed changes the
keys of KSampler and everything downstream, while the loaders keep theirs: their cached outputs (the
loaded models) are reused and nothing upstream of the change runs again.

Like ComfyUI's default ("classic") cache, only entries of the current prompt are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zturbo.graph.prompt import DependencyCycle, dependency_order, is_link, unwrap
from zturbo.nodes.schema import UNIQUE_ID

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext
    from zturbo.nodes.registry import NodeRegistry

log = logging.getLogger(__name__)


class GraphError(Exception):
    """A structural problem found while planning (a cycle, a link to a missing node)."""

    def __init__(self, node_id: str, message: str) -> None:
        super().__init__(message)
        self.node_id = node_id


@dataclass
class CachedNode:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


class OutputCache:
    """Node results by signature key."""

    def __init__(self) -> None:
        self._entries: dict[str, CachedNode] = {}

    def get(self, key: str) -> CachedNode | None:
        return self._entries.get(key)

    def put(self, key: str, entry: CachedNode) -> None:
        self._entries[key] = entry

    def retain(self, keys: set[str]) -> None:
        """Drop every entry the current prompt does not use (frees models no longer in the graph)."""
        for key in [k for k in self._entries if k not in keys]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class SignatureBuilder:
    """Computes (and memoises) every node's cache key for one prompt, sources first (no recursion)."""

    def __init__(
        self, prompt: dict[str, Any], registry: NodeRegistry, context: ExecutionContext | None
    ) -> None:
        self.prompt = prompt
        self.registry = registry
        self.context = context
        self._memo: dict[str, str] = {}

    def all_keys(self) -> dict[str, str]:
        """Every node that has a key: one in or behind a cycle, or linked to a missing node, has none
        (validation refused the outputs that need it; `key` says why if one is asked for)."""
        keys = {}
        for node_id in self.prompt:
            with contextlib.suppress(GraphError):
                keys[node_id] = self.key(node_id)
        return keys

    def key(self, node_id: str) -> str:
        if node_id in self._memo:
            return self._memo[node_id]
        try:
            order = dependency_order(self.prompt, [node_id], stop=lambda n: n in self._memo)
        except DependencyCycle as cycle:
            raise GraphError(node_id, str(cycle)) from None
        for step in order:
            if step not in self._memo:
                self._memo[step] = self._digest(step)
        return self._memo[node_id]

    def _digest(self, node_id: str) -> str:
        """The key of a node whose sources all have theirs."""
        node = self.prompt[node_id]
        items = [
            self._input_item(node_id, name, value) for name, value in sorted(node.get("inputs", {}).items())
        ]
        parts: list[Any] = [node["class_type"], self._is_changed(node_id, node), items]
        schema = self.registry.schema(node["class_type"])
        if schema is not None and schema.has_hidden(UNIQUE_ID[1]):
            parts.append(node_id)  # ComfyUI keys nodes that see their own id by that id
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()

    def _input_item(self, node_id: str, name: str, value: Any) -> list[Any]:
        if is_link(value) and len(value) == 2:
            source, slot = value
            if source not in self.prompt:
                raise GraphError(
                    node_id, f"input '{name}' of node {node_id} is linked to missing node {source}"
                )
            return [name, "link", self._memo[source], slot]
        return [name, "value", unwrap(value)]

    def _is_changed(self, node_id: str, node: dict[str, Any]) -> Any:
        """The node's `is_changed` value (literal inputs only, as ComfyUI passes them); a failure or NaN
        makes a one-off value so the node always runs."""
        cls = self.registry.get(node["class_type"])
        hook = getattr(cls, "is_changed", None)
        if hook is None:
            return None
        literals = {k: unwrap(v) for k, v in node.get("inputs", {}).items() if not is_link(v)}
        try:
            value = hook(self.context, **literals)
        except Exception as exc:
            log.warning("is_changed of node %s failed (%s); it will run", node_id, exc)
            return uuid.uuid4().hex
        if isinstance(value, float) and math.isnan(value):
            return uuid.uuid4().hex
        return value
