"""Workflow files: API JSON, UI JSON, or a PNG carrying ComfyUI's `workflow` / `prompt` chunks.

A PNG prefers its `workflow` chunk (converted to API), as ComfyUI's drop handler does, since that is
the graph the user saw; the `prompt` chunk is the fallback. Every error names the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zturbo.errors import InputError
from zturbo.graph.convert import ui_to_api
from zturbo.output.png import read_png_text

if TYPE_CHECKING:
    from zturbo.nodes.registry import NodeRegistry

log = logging.getLogger(__name__)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WorkflowFormat = Literal["api", "ui"]


def is_api_prompt(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(node, dict) and "class_type" in node for node in data.values())
    )


def detect_format(data: Any) -> WorkflowFormat:
    """`"ui"` for the frontend's graph format, `"api"` for `{id: {class_type, inputs}}`."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return "ui"
    if is_api_prompt(data):
        return "api"
    raise InputError(
        "not a ComfyUI workflow: expected UI format (an object with 'nodes' and 'links') or API format "
        "(an object mapping node ids to {'class_type', 'inputs'})"
    )


def load_workflow_data(data: Any, registry: NodeRegistry) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(API prompt, UI workflow or None) from parsed JSON. Also accepts a saved `/prompt` request
    body (`{"prompt": ..., "extra_data": {"extra_pnginfo": {"workflow": ...}}}`)."""
    if isinstance(data, dict) and "nodes" not in data and is_api_prompt(data.get("prompt")):
        workflow = ((data.get("extra_data") or {}).get("extra_pnginfo") or {}).get("workflow")
        return data["prompt"], workflow if isinstance(workflow, dict) else None
    if detect_format(data) == "ui":
        return ui_to_api(data, registry), data
    return data, None


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{source}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc


def _from_png(path: Path, registry: NodeRegistry) -> tuple[dict[str, Any], dict[str, Any] | None]:
    chunks = read_png_text(path)
    if "workflow" in chunks:
        try:
            workflow = _parse_json(chunks["workflow"], f"{path} (workflow chunk)")
            return ui_to_api(workflow, registry), workflow
        except InputError as exc:
            if "prompt" not in chunks:
                raise InputError(f"{path}: {exc}") from exc
            log.warning("%s: unusable workflow chunk (%s); using the prompt chunk", path, exc)
    if "prompt" in chunks:
        prompt = _parse_json(chunks["prompt"], f"{path} (prompt chunk)")
        if not is_api_prompt(prompt):
            raise InputError(f"{path}: the 'prompt' chunk is not an API-format ComfyUI prompt")
        return prompt, None
    hint = (
        " It has A1111-style 'parameters' text; use `zturbo generate --from` for that."
        if "parameters" in chunks
        else ""
    )
    raise InputError(f"{path}: this PNG carries no ComfyUI 'workflow' or 'prompt' metadata.{hint}")


def load_workflow_file(
    path: str | Path, registry: NodeRegistry | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(API prompt, UI workflow or None) from an API JSON, UI JSON or PNG file."""
    if registry is None:
        from zturbo.nodes.registry import default_registry

        registry = default_registry()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(len(PNG_SIGNATURE))
    if head == PNG_SIGNATURE:
        return _from_png(path, registry)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: neither JSON nor a PNG image") from exc
    try:
        return load_workflow_data(_parse_json(text, str(path)), registry)
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(str(path)) else f"{path}: {message}") from exc
