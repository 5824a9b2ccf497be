"""The server writes what pool workers produced: each file returned as bytes gets a new name in the
server's own output (or temp) folder, through the same never-overwrite save path as SaveImage, and the
result's ui entry is changed to that name, so `/view` and history refer to files the server holds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from zturbo.output.naming import save_target, write_numbered

# `{stem}_{counter:05}{trailing}.{ext}`: SaveImage's `_00001_.png`, SaveImageAdvanced's `_00001.png`.
_NUMBERED = re.compile(r"^(?P<stem>.*)_(?P<n>\d{5,})(?P<trailing>_?)\.(?P<ext>[A-Za-z0-9]+)$")


def _name_parts(filename: str) -> tuple[str, str, str]:
    """(stem, what follows the counter, extension) of a worker's file name."""
    match = _NUMBERED.match(filename)
    if match is None:
        stem, dot, ext = filename.rpartition(".")
        return (stem, "", ext) if dot else (filename, "", "bin")
    return match["stem"], match["trailing"], match["ext"]


def publish_file(folders: dict[str, Path], kind: str, subfolder: str, filename: str, data: bytes) -> str:
    """Write `data` under `folders[kind]/subfolder` with the first free counter; the new file name."""
    stem, trailing, ext = _name_parts(filename)
    prefix = f"{subfolder}/{stem}" if subfolder else stem
    target = save_target(folders[kind], prefix, 0, 0, trailing=trailing or ".")

    def write(_index: int, item: bytes, path: Path) -> None:
        path.write_bytes(item)

    (path,) = write_numbered([data], target, "{stem}_{n:05}" + trailing + "." + ext, write)
    return path.name


def publish_outputs(outputs: dict[str, Any], files: list[dict[str, Any]], folders: dict[str, Path]) -> dict:
    """`outputs` with each returned file written by the server and its ui entry renamed to match."""
    for file in files:
        name = publish_file(
            folders, file["type"], str(file.get("subfolder", "")), file["filename"], file["data"]
        )
        entry = outputs[file["node"]][file["key"]][file["index"]]
        entry["filename"] = name
    return outputs
