"""Per-node progress of one prompt, sent as ComfyUI's `progress_state` WebSocket message.

ComfyUI (comfy_execution/progress.py) keeps a state per node (pending, running, finished, error) with
a value and max, and at every node start, progress update and finish sends all the non-pending nodes:
`{"prompt_id": id, "nodes": {node_id: {"value", "max", "state", "node_id", "prompt_id",
"display_node_id", "parent_node_id", "real_node_id"}}}`. The new frontend draws per-node progress from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RUNNING, FINISHED, ERROR = "running", "finished", "error"


class NodeProgress:
    """The node states of one prompt; every change sends the whole non-pending set through `send`."""

    def __init__(self, prompt_id: str, send: Callable[[str, dict], None]) -> None:
        self.prompt_id = prompt_id
        self.send = send
        self.nodes: dict[str, dict[str, Any]] = {}

    def start(self, node_id: str) -> None:
        self._set(node_id, RUNNING, 0.0, 1.0)

    def update(self, node_id: str, value: float, maximum: float) -> None:
        self._set(node_id, RUNNING, value, maximum)

    def finish(self, node_id: str) -> None:
        entry = self.nodes.get(node_id)
        maximum = entry["max"] if entry is not None else 1.0
        self._set(node_id, FINISHED, maximum, maximum)

    def fail(self, node_id: str) -> None:
        entry = self.nodes.get(node_id)
        value, maximum = (entry["value"], entry["max"]) if entry is not None else (0.0, 1.0)
        self._set(node_id, ERROR, value, maximum)

    def _set(self, node_id: str, state: str, value: float, maximum: float) -> None:
        self.nodes[node_id] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        self.send("progress_state", self.message())

    def message(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "nodes": {k: dict(v) for k, v in self.nodes.items()}}
