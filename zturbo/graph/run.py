"""`zturbo run`: execute a workflow file without a server.

Saved widget values are used as they are, as the frontend's first Queue would send them (its
control_after_generate acts after queueing). `--set NODE.INPUT=VALUE` edits the API prompt first,
NODE being a node id (`57:3`), a class_type (`KSampler`) or a title, as long as it names one node.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zturbo.errors import InputError
from zturbo.graph.executor import PromptExecutor
from zturbo.graph.formats import load_workflow_data, load_workflow_file
from zturbo.graph.widgets import set_widget_value

if TYPE_CHECKING:
    from zturbo.graph.prompt_run import ExecutionResult
    from zturbo.graph.validation import ValidationResult
    from zturbo.nodes.context import ExecutionContext
    from zturbo.nodes.registry import NodeRegistry
    from zturbo.nodes.schema import InputSpec

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}


def _matches(prompt: dict[str, Any], selector: str) -> list[str]:
    if selector in prompt:
        return [selector]
    by_class = [i for i, n in prompt.items() if n.get("class_type") == selector]
    if by_class:
        return by_class
    return [i for i, n in prompt.items() if (n.get("_meta") or {}).get("title") == selector]


def _target(prompt: dict[str, Any], left: str) -> tuple[str, str]:
    """Split `NODE.INPUT` at the dot that leaves a selector naming exactly one node."""
    for index, char in enumerate(left):
        if char != ".":
            continue
        selector, name = left[:index], left[index + 1 :]
        found = _matches(prompt, selector)
        if len(found) > 1:
            raise InputError(f"--set {left}: {selector!r} matches nodes {', '.join(found)}; use a node id")
        if found and name:
            return found[0], name
    raise InputError(f"--set {left}: no node matches; use a node id, class_type or title, then .input")


def _parse_value(spec: InputSpec | None, text: str) -> Any:
    kind = spec.type if spec is not None else None
    try:
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)
    except ValueError as exc:
        raise InputError(f"--set: {text!r} is not a valid {kind} value") from exc
    if kind == "BOOLEAN":
        if text.lower() not in TRUE_WORDS | FALSE_WORDS:
            raise InputError(f"--set: {text!r} is not a boolean (true/false)")
        return text.lower() in TRUE_WORDS
    return text


def apply_sets(
    prompt: dict[str, Any],
    sets: Sequence[str],
    registry: NodeRegistry,
    workflow: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of `prompt` with each `NODE.INPUT=VALUE` applied (links are replaced by the value).

    If `workflow` (the UI graph) is given, the matching widgets are updated in it too, in place, so
    the PNG's `workflow` chunk reproduces what ran.
    """
    result = {node_id: {**node, "inputs": dict(node.get("inputs") or {})} for node_id, node in prompt.items()}
    for item in sets:
        left, sep, text = item.partition("=")
        if not sep:
            raise InputError(f"--set {item}: expected NODE.INPUT=VALUE")
        node_id, name = _target(result, left.strip())
        schema = registry.schema(result[node_id].get("class_type", ""))
        inputs = dict(schema.expand_inputs(result[node_id]["inputs"])) if schema else {}
        if schema is not None and name not in inputs:
            valid = ", ".join(inputs) or "none"
            raise InputError(
                f"--set {item}: node {node_id} ({schema.name}) has no input {name!r}; inputs: {valid}"
            )
        value = _parse_value(inputs.get(name), text)
        result[node_id]["inputs"][name] = value
        if workflow is not None:
            set_widget_value(workflow, node_id, name, value, registry)
    return result


def describe_validation(result: ValidationResult) -> str:
    """A readable summary of a failed validation, for the CLI."""
    error = result.error
    if error is None:
        lines = ["invalid prompt"]
    elif error.get("type") == "missing_node_type":  # the message already names every node
        lines = [error["message"]]
    else:
        lines = [f"{error['message']}: {error['details']}"]
    for node_id, info in result.node_errors.items():
        for err in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {err['message']}: {err['details']}")
    return "\n".join(lines)


def run_workflow(
    path_or_dict: str | Path | dict[str, Any],
    *,
    sets: Sequence[str] = (),
    context: ExecutionContext,
    on_event: Callable[[str, dict], None] | None = None,
    registry: NodeRegistry | None = None,
    on_preview: Callable[[bytes], None] | None = None,
    interrupt: threading.Event | None = None,
) -> ExecutionResult:
    """Load, edit (`sets`), validate and run a workflow; raises `InputError` if it is invalid.

    The UI workflow (when there is one) goes into the PNGs' `workflow` chunk, as the frontend does.
    """
    if registry is None:
        from zturbo.nodes.registry import default_registry

        registry = default_registry(context)
    if isinstance(path_or_dict, dict):
        prompt, workflow = load_workflow_data(path_or_dict, registry)
    else:
        prompt, workflow = load_workflow_file(path_or_dict, registry)
    if workflow is not None and sets:
        workflow = copy.deepcopy(workflow)
    prompt = apply_sets(prompt, sets, registry, workflow)
    executor = PromptExecutor(registry, context)
    checked = executor.validate(prompt)
    if not checked.ok:
        raise InputError(describe_validation(checked))
    extra_data = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
    return executor.execute(
        prompt,
        str(uuid.uuid4()),
        outputs=checked.outputs,
        extra_data=extra_data,
        emit=on_event or (lambda _event, _data: None),
        emit_preview=on_preview,
        interrupt=interrupt,
    )
