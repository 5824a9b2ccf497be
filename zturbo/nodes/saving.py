"""What SaveImage-style nodes write: ComfyUI's PNG chunks and the `ui` entries of the files saved.

Where files go (prefix tokens, subfolders, counters, never overwriting, never escaping the folder) is
`zturbo.output.naming`, shared with the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from zturbo.output.naming import SaveTarget, write_numbered
from zturbo.output.png import save_png, save_png16


def png_text(prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None) -> dict[str, str]:
    """ComfyUI's PNG chunks: `prompt` (API JSON) and one chunk per `extra_pnginfo` key (`workflow`)."""
    text: dict[str, str] = {}
    if prompt is not None:
        text["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        text[str(key)] = json.dumps(value)
    return text


def write_batch(
    images: torch.Tensor,
    target: SaveTarget,
    kind: str,
    pattern: str,
    write: Callable[[torch.Tensor, Path], None],
) -> list[dict[str, str]]:
    """Write each image under `pattern` (see `write_numbered`) and return the nodes' ui entries."""
    paths = write_numbered(images, target, pattern, lambda _index, image, path: write(image, path))
    return [{"filename": path.name, "subfolder": target.subfolder, "type": kind} for path in paths]


def write_png8(image: torch.Tensor, path: Path, text: dict[str, str], compress_level: int = 4) -> None:
    """8-bit PNG, written atomically; pixels are clip(255·x) truncated, as ComfyUI does."""
    save_png(image, path, text, compress_level)


def write_png16(image: torch.Tensor, path: Path, text: dict[str, str]) -> None:
    """16-bit RGB PNG (Pillow cannot write those), written atomically."""
    save_png16(image, path, text)
