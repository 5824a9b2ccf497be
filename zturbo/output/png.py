"""Write PNGs with text chunks, atomically, and read the chunks back.

Pixels are `clip(255·x, 0, 255)` truncated to uint8 and compressed at level 4, as ComfyUI saves them, so
the same image tensor gives the same file bytes in both tools. A file is written to a temporary name in
the target folder and renamed into place: a crash never leaves a half-written image behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from zturbo.errors import InputError


def to_pil(image: torch.Tensor) -> Image.Image:
    """(H, W, 3) float in [0, 1] → PIL image."""
    array = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def save_png(image: torch.Tensor | Image.Image, path: Path, text: dict[str, str] | None = None) -> Path:
    """Save atomically with tEXt chunks (`parameters`, `prompt`, `workflow`, ...)."""
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format="PNG", pnginfo=info, compress_level=4)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_png_text(path: Path) -> dict[str, str]:
    """The PNG's text chunks (empty if none); a clear error if it is not a PNG."""
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise InputError(f"{path}: is a {img.format} image, expected a PNG with generation metadata")
            return {k: v for k, v in img.info.items() if isinstance(v, str)}
    except (OSError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable PNG ({exc})") from exc


def next_counter_path(folder: Path, stem: str) -> Path:
    """ComfyUI naming: `{stem}_{counter:05}_.png` with counter = 1 + the highest existing one."""
    highest = 0
    if folder.is_dir():
        for p in folder.glob(f"{stem}_*_.png"):
            middle = p.name[len(stem) + 1 : -len("_.png")]
            if middle.isdigit():
                highest = max(highest, int(middle))
    return folder / f"{stem}_{highest + 1:05}_.png"
