"""What a file dropped on the creator page holds: settings to load and a workflow to run.

PNG: our `parameters` text (exact settings), ComfyUI's `workflow` (UI graph) and `prompt` (API graph)
chunks. JSON: a UI or API workflow, or a saved `/prompt` body. Settings come from `parameters` when
present, else from the API graph; the runnable prompt from `workflow`, else `prompt`, else the graph
`zturbo generate` would build from `parameters`.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zturbo.errors import MAX_IMAGE_PIXELS, ImageTooLargeError, InputError
from zturbo.graph.formats import PNG_SIGNATURE, load_workflow_data
from zturbo.output.metadata import api_graph, parse_parameters
from zturbo.output.png import read_png_text
from zturbo.server import json_input
from zturbo.server.creator import model_files, settings_dict, settings_from_graph

log = logging.getLogger(__name__)


@dataclass
class Inspection:
    """The answer of `POST /zturbo/inspect`; every part may be missing."""

    kind: str
    settings: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    workflow: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "settings": self.settings,
            "prompt": self.prompt,
            "workflow": self.workflow,
            "notes": self.notes,
        }


def _workflow_into(found: Inspection, data: Any, registry: Any) -> None:
    """Fill prompt (and workflow) from parsed workflow JSON; a graph we cannot convert is noted."""
    try:
        prompt, workflow = load_workflow_data(data, registry)
    except InputError as exc:
        found.notes.append(str(exc))
        return
    found.prompt, found.workflow = prompt, workflow
    if found.settings is None:
        found.settings = settings_from_graph(prompt)


def _png_text(data: bytes, limit: int) -> dict[str, str]:
    """The PNG's text chunks; its pixels are never decoded, but a bomb's header is refused all the same."""
    if len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        ImageTooLargeError.check(width, height, "the dropped PNG", limit)
    try:
        return read_png_text(io.BytesIO(data))  # type: ignore[arg-type]
    except InputError:
        raise
    except Exception as exc:  # Pillow's limits on text chunks, a truncated file, ...
        raise InputError(f"the dropped PNG could not be read ({exc})") from None


def _inspect_png(data: bytes, registry: Any, models_dir: Path, limit: int) -> Inspection:
    chunks = _png_text(data, limit)
    found = Inspection("png")
    request = None
    if "parameters" in chunks:
        try:
            request, _ = parse_parameters(chunks["parameters"])
            found.settings = settings_dict(request)
        except InputError as exc:
            found.notes.append(str(exc))
    for key in ("workflow", "prompt"):
        if key in chunks and found.prompt is None:
            try:
                _workflow_into(found, json_input.loads(chunks[key], f"the PNG's {key} chunk"), registry)
            except InputError as exc:
                found.notes.append(str(exc))
    if found.prompt is None and request is not None:
        found.prompt = api_graph(request, model_files(models_dir))
    if found.settings is None and found.prompt is None:
        found.notes.append("this PNG carries no generation settings or workflow")
    return found


def inspect_bytes(data: bytes, registry: Any, models_dir: Path, limit: int = MAX_IMAGE_PIXELS) -> Inspection:
    """Inspect an uploaded PNG or workflow JSON; `InputError` if it is neither."""
    if data.startswith(PNG_SIGNATURE):
        return _inspect_png(data, registry, models_dir, limit)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("expected a PNG image or a workflow JSON file") from exc
    found = Inspection("json")
    _workflow_into(found, json_input.loads(data, "the file"), registry)
    if found.prompt is None:
        raise InputError("; ".join(found.notes) or "not a ComfyUI workflow")
    return found
