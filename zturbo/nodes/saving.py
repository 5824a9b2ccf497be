"""Where and how SaveImage-style nodes write files.

Names follow ComfyUI (`folder_paths.get_save_image_path`): the prefix may hold `/` subfolders and
`%width%`, `%height%`, `%year%`... `%date:yyyy-MM-dd%` tokens; the counter is one more than the
highest one already used by that prefix. Unlike ComfyUI, which only checks the normalised path, any
`..`, absolute path or symlink escape is refused outright: a prompt must never write outside the folder.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zturbo.nodes.paths import ensure_inside, relative_parts
from zturbo.output.png import save_png

_DATE_TOKEN = re.compile(r"%date:([^%]+)%")
_DATE_PARTS = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")


@dataclass(frozen=True)
class SaveTarget:
    """A resolved save location: the folder to write in, the file stem and the first free counter."""

    folder: Path
    stem: str
    counter: int
    subfolder: str


def _format_date(pattern: str, now: time.struct_time) -> str:
    values = {
        "yyyy": str(now.tm_year),
        "yy": str(now.tm_year % 100).zfill(2),
        "MM": str(now.tm_mon).zfill(2),
        "M": str(now.tm_mon),
        "dd": str(now.tm_mday).zfill(2),
        "d": str(now.tm_mday),
        "hh": str(now.tm_hour).zfill(2),
        "h": str(now.tm_hour),
        "mm": str(now.tm_min).zfill(2),
        "m": str(now.tm_min),
        "ss": str(now.tm_sec).zfill(2),
        "s": str(now.tm_sec),
    }
    return _DATE_PARTS.sub(lambda m: values[m.group(0)], pattern)


def substitute_tokens(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """Replace ComfyUI's prefix tokens (the frontend does %date:…% for UI users; we do it for API ones)."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    prefix = _DATE_TOKEN.sub(lambda m: _format_date(m.group(1), now), prefix)
    tokens = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": str(now.tm_mon).zfill(2),
        "%day%": str(now.tm_mday).zfill(2),
        "%hour%": str(now.tm_hour).zfill(2),
        "%minute%": str(now.tm_min).zfill(2),
        "%second%": str(now.tm_sec).zfill(2),
    }
    for token, value in tokens.items():
        prefix = prefix.replace(token, value)
    return prefix


def _next_counter(folder: Path, stem: str, trailing: str) -> int:
    """1 + the highest counter among `{stem}_{digits}{trailing}...` files (ComfyUI's map_filename)."""
    highest = 0
    if folder.is_dir():
        lead = f"{stem}_"
        for entry in os.listdir(folder):
            if os.path.normcase(entry[: len(lead)]) != os.path.normcase(lead):
                continue
            digits = re.match(r"\d+", entry[len(lead) :])
            if digits and entry[len(lead) + len(digits.group(0)) :].startswith(trailing):
                highest = max(highest, int(digits.group(0)))
    return highest + 1


def save_target(root: Path, prefix: str, width: int, height: int, *, trailing: str = "_") -> SaveTarget:
    """Resolve a filename prefix under `root`, creating its subfolder; refuses any escape."""
    prefix = substitute_tokens(prefix, width, height)
    parts = relative_parts(prefix, what=f"filename prefix {prefix!r}")
    stem = parts[-1] if parts else ""
    sub_parts = parts[:-1]
    folder = root.joinpath(*sub_parts)
    root.mkdir(parents=True, exist_ok=True)
    ensure_inside(root, folder, what=f"filename prefix {prefix!r}")
    folder.mkdir(parents=True, exist_ok=True)
    ensure_inside(root, folder, what=f"filename prefix {prefix!r}")
    return SaveTarget(folder, stem, _next_counter(folder, stem, trailing), "/".join(sub_parts))


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
    """Write each image under `pattern` (`{stem}`, `{n}`: counter) and return the ui entries.

    `%batch_num%` in the stem becomes the image's index; a name already taken is skipped, so a save
    never overwrites a file (even if another process wrote one since the counter was computed).
    """
    results, counter = [], target.counter
    for batch_number, image in enumerate(images):
        stem = target.stem.replace("%batch_num%", str(batch_number))
        while (target.folder / pattern.format(stem=stem, n=counter)).exists():
            counter += 1
        path = ensure_inside(
            target.folder, target.folder / pattern.format(stem=stem, n=counter), what="output file"
        )
        write(image, path)
        results.append({"filename": path.name, "subfolder": target.subfolder, "type": kind})
        counter += 1
    return results


def write_png8(image: torch.Tensor, path: Path, text: dict[str, str], compress_level: int = 4) -> None:
    """8-bit PNG, written atomically; pixels are clip(255·x) truncated, as ComfyUI does."""
    if compress_level == 4:
        save_png(image, path, text)
        return
    array = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    _atomic_write(path, _encode_png(array, 8, text, compress_level))


def write_png16(image: torch.Tensor, path: Path, text: dict[str, str]) -> None:
    """16-bit RGB PNG (Pillow cannot write those), written atomically."""
    array = np.clip(65535.0 * image.detach().cpu().float().numpy() + 0.5, 0, 65535).astype(">u2")
    _atomic_write(path, _encode_png(array, 16, text, 4))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode_png(array: np.ndarray, bit_depth: int, text: dict[str, str], level: int) -> bytes:
    height, width, channels = array.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    rows = b"".join(b"\x00" + array[y].tobytes() for y in range(height))
    chunks = [_chunk(b"IHDR", header)]
    for key, value in text.items():
        chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1")))
    chunks.append(_chunk(b"IDAT", zlib.compress(rows, level)))
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
