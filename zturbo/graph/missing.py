"""Which node types a prompt uses that zturbo lacks, and why: one report for all of them.

ComfyUI stops at the first unknown class_type ("Node 'X' not found. The custom node may not be
installed."); zturbo lists every missing type at once and says what kind of node each is:

* a core ComfyUI node zturbo has not implemented yet;
* a ComfyUI API (partner) node, which calls a paid cloud service: zturbo does not provide those;
* anything else is a custom node (not part of ComfyUI), which zturbo does not provide either.

The core and API names are ComfyUI's own (`comfy_nodes.json`, recorded from a real ComfyUI's
`/object_info`; its `comfyui_version` says which).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CORE = "core"
API = "api"
CUSTOM = "custom"
REASONS = {
    CORE: "zturbo does not implement this ComfyUI node yet",
    API: "ComfyUI API node: zturbo does not provide it",
    CUSTOM: "custom node (not part of ComfyUI): zturbo does not provide it",
}


@cache
def comfy_node_names() -> dict[str, Any]:
    """`{"comfyui_version", "core": [...], "api": [...]}`: ComfyUI's node types by kind."""
    return json.loads((Path(__file__).with_name("comfy_nodes.json")).read_text(encoding="utf-8"))


def node_kind(class_type: str) -> str:
    """CORE, API or CUSTOM for a class_type zturbo does not have."""
    if class_type in _as_set("core"):
        return CORE
    if class_type in _as_set("api"):
        return API
    return CUSTOM


@cache
def _as_set(kind: str) -> frozenset[str]:
    return frozenset(comfy_node_names()[kind])


@dataclass(frozen=True)
class MissingType:
    """One class_type zturbo lacks and the nodes of the prompt that use it."""

    class_type: str
    node_ids: tuple[str, ...]
    titles: tuple[str, ...]

    @property
    def kind(self) -> str:
        return node_kind(self.class_type)

    @property
    def reason(self) -> str:
        return REASONS[self.kind]

    def line(self) -> str:
        nodes = ", ".join(f"#{n}" for n in self.node_ids)
        return f"{self.class_type} (node {nodes}): {self.reason}"

    def info(self) -> dict[str, Any]:
        return {
            "class_type": self.class_type,
            "node_ids": list(self.node_ids),
            "node_titles": list(self.titles),
            "kind": self.kind,
            "reason": self.reason,
        }


# Editor-only notes: no inputs, no outputs, nothing to run. An API prompt that carries one (a client
# that converted a UI graph naively) runs without it instead of failing.
UI_ONLY = frozenset({"Note", "MarkdownNote"})


def missing_types(prompt: dict[str, Any], known: Any) -> list[MissingType]:
    """Every class_type of `prompt` not in `known` (a registry or set), in order of first use."""
    found: dict[str, list[tuple[str, str]]] = {}
    for node_id, node in prompt.items():
        class_type = node["class_type"]
        if class_type not in known and class_type not in UI_ONLY:
            title = (node.get("_meta") or {}).get("title", class_type)
            found.setdefault(class_type, []).append((str(node_id), str(title)))
    return [
        MissingType(ct, tuple(i for i, _ in uses), tuple(t for _, t in uses)) for ct, uses in found.items()
    ]


def missing_message(missing: list[MissingType]) -> str:
    """One message naming every missing type (a single one reads like ComfyUI's own message)."""
    if len(missing) == 1:
        only = missing[0]
        return f"Node '{only.titles[0]}' not found ({only.class_type}): {only.reason}."
    lines = "\n".join(f"  - {m.line()}" for m in missing)
    return f"{len(missing)} node types in this workflow are not available in zturbo:\n{lines}"
