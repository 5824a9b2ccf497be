"""TEST DOUBLES for the server tests: a tiny node registry and executor with the interfaces of
`zturbo.nodes.registry.NodeRegistry` and `zturbo.graph.executor.PromptExecutor`.

The real graph package was not there when these tests were written; the doubles emit the same
ComfyUI events and JSON shapes so the server can be tested alone. Node classes:
- `SaveImage` (output node): writes a small PNG under the output folder, reports it as `images`.
- `Slow`: `steps` progress events with a JPEG preview each; waits on `executor.gate` (or an interrupt).
- `Fail`: the node fails (execution_error), like a real node raising.
- `Crash`: the executor itself raises, which the real one promises never to do.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

OUTPUT_NODES = {"SaveImage"}
NODE_CLASSES = ("SaveImage", "Slow", "Fail", "Crash")


def _info(name: str) -> dict:
    return {
        "input": {"required": {"value": ["INT", {"default": 1, "min": 0}]}, "optional": {}},
        "input_order": {"required": ["value"]},
        "output": [] if name in OUTPUT_NODES else ["IMAGE"],
        "output_is_list": [] if name in OUTPUT_NODES else [False],
        "output_name": [] if name in OUTPUT_NODES else ["IMAGE"],
        "name": name,
        "display_name": name,
        "description": "",
        "category": "test",
        "output_node": name in OUTPUT_NODES,
    }


class FakeRegistry:
    def object_info(self) -> dict:
        return {name: _info(name) for name in NODE_CLASSES}

    def object_info_for(self, class_type: str) -> dict:
        if class_type not in NODE_CLASSES:
            raise KeyError(class_type)
        return _info(class_type)


@dataclass
class ValidationResult:
    ok: bool
    error: Any
    node_errors: dict
    outputs: list[str]


@dataclass
class ExecutionResult:
    status_str: str
    completed: bool
    outputs: dict
    messages: list
    error: Any = None
    interrupted: bool = False


def ms() -> int:
    return int(time.time() * 1000)


def jpeg(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@dataclass
class FakeExecutor:
    output_dir: Path
    registry: FakeRegistry = field(default_factory=FakeRegistry)
    gate: threading.Event = field(default_factory=threading.Event)
    executed: list[str] = field(default_factory=list)
    freed: list[bool] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()  # open unless a test closes it

    def validate(self, prompt: dict, partial_targets: list[str] | None = None) -> ValidationResult:
        for node_id, node in prompt.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type not in NODE_CLASSES:
                error = {
                    "type": "missing_node_type",
                    "message": f"Node '{class_type}' not found.",
                    "details": f"Node ID '#{node_id}'",
                    "extra_info": {"node_id": node_id, "class_type": class_type, "node_title": class_type},
                }
                return ValidationResult(False, error, {}, [])
        outputs = [
            i
            for i, n in prompt.items()
            if n["class_type"] in OUTPUT_NODES and (partial_targets is None or i in partial_targets)
        ]
        if not outputs:
            error = {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            }
            return ValidationResult(False, error, {}, [])
        return ValidationResult(True, None, {}, outputs)

    def free(self, unload_models: bool) -> None:
        self.freed.append(unload_models)

    def execute(self, prompt, prompt_id, *, outputs, extra_data, emit, emit_preview, interrupt):
        self.executed.append(prompt_id)
        self.started.set()
        messages: list = []

        def add(event: str, data: dict, record: bool = True) -> None:
            data = {**data, "prompt_id": prompt_id}
            if record:
                data["timestamp"] = ms()
                messages.append([event, data])
            emit(event, data)

        add("execution_start", {})
        add("execution_cached", {"nodes": []})
        ui: dict = {}
        for node_id in sorted(prompt, key=lambda k: (prompt[k]["class_type"] in OUTPUT_NODES, k)):
            class_type = prompt[node_id]["class_type"]
            add("executing", {"node": node_id, "display_node": node_id}, record=False)
            if class_type == "Crash":
                raise RuntimeError("executor bug")
            if class_type == "Fail":
                add(
                    "execution_error",
                    {
                        "node_id": node_id,
                        "node_type": "Fail",
                        "executed": [],
                        "exception_message": "boom",
                        "exception_type": "ValueError",
                        "traceback": [],
                        "current_inputs": {},
                        "current_outputs": {},
                    },
                )
                return ExecutionResult("error", False, ui, messages, error=messages[-1][1])
            if class_type == "Slow" and not self._slow(
                node_id, prompt[node_id], add, emit_preview, interrupt
            ):
                add("execution_interrupted", {"node_id": node_id, "node_type": "Slow", "executed": []})
                return ExecutionResult("error", False, ui, messages, interrupted=True)
            if class_type == "SaveImage":
                ui[node_id] = {"images": [self._save(prompt_id, node_id)]}
                add(
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": ui[node_id]},
                    record=False,
                )
        add("execution_success", {})
        return ExecutionResult("success", True, ui, messages)

    def _slow(self, node_id, node, add, emit_preview, interrupt) -> bool:
        steps = int(node.get("inputs", {}).get("value", 2))
        for step in range(steps):
            add("progress", {"value": step + 1, "max": steps, "node": node_id}, record=False)
            if emit_preview is not None:
                emit_preview(jpeg())
        while not self.gate.wait(0.01):
            if interrupt is not None and interrupt.is_set():
                return False
        return not (interrupt is not None and interrupt.is_set())

    def _save(self, prompt_id: str, node_id: str) -> dict:
        name = f"zt_{prompt_id[:8]}_{node_id}_00001_.png"
        Image.new("RGBA", (4, 4), (0, 128, 255, 200)).save(self.output_dir / name)
        return {"filename": name, "subfolder": "", "type": "output"}


def save_prompt(value: int = 1) -> dict:
    return {
        "1": {"class_type": "Slow", "inputs": {"value": value}},
        "9": {"class_type": "SaveImage", "inputs": {}},
    }
