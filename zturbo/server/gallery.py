"""The creator page's gallery: finished prompts from history, newest first, one item per image still
on disk, each with the settings that made it (read back from the prompt's API graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zturbo.server import paths
from zturbo.server.creator import settings_from_graph
from zturbo.server.errors import NotFoundError
from zturbo.server.history import HistoryStore


def _images(entry: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for node_out in (entry.get("outputs") or {}).values():
        for image in (node_out or {}).get("images") or []:
            if isinstance(image, dict) and image.get("type", "output") == "output" and "filename" in image:
                found.append(image)
    return found


def _exists(output_dir: Path, image: dict[str, Any]) -> bool:
    try:
        return paths.readable_file(output_dir, image.get("subfolder", ""), image["filename"]).is_file()
    except Exception:  # a name that is not ours to read is simply not shown
        return False


def gallery_items(history: HistoryStore, output_dir: Path, limit: int = 100) -> list[dict[str, Any]]:
    """Up to `limit` prompts' images, newest prompt first."""
    entries = history.get_history(max_items=limit)
    items = []
    for prompt_id, entry in reversed(list(entries.items())):
        item = entry.get("prompt") or []
        graph = item[2] if len(item) > 2 else None
        extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
        settings = settings_from_graph(graph)
        for index, image in enumerate(i for i in _images(entry) if _exists(output_dir, i)):
            items.append(
                {
                    "prompt_id": prompt_id,
                    "index": index,
                    "image": {
                        "filename": image["filename"],
                        "subfolder": image.get("subfolder", ""),
                        "type": "output",
                    },
                    "settings": settings,
                    "created": extra.get("create_time"),
                }
            )
    return items


def delete_output(history: HistoryStore, output_dir: Path, filename: str, subfolder: str = "") -> dict:
    """Delete an output image; drop its history entry once none of the entry's images are left."""
    path = paths.readable_file(output_dir, subfolder, filename)
    if not path.is_file():
        raise NotFoundError(f"{filename} not found")
    prompt_id = history.find_output(filename, subfolder, "output")
    path.unlink()
    entry_deleted = False
    if prompt_id is not None:
        entry = history.get(prompt_id)
        if entry is None or not any(_exists(output_dir, i) for i in _images(entry)):
            history.delete([prompt_id])
            entry_deleted = True
    return {"deleted": filename, "prompt_id": prompt_id, "history_deleted": entry_deleted}
