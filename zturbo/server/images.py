"""Image re-encoding for `/view` (`preview=webp;90`, `channel=rgb|a`), done with Pillow off the loop."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from PIL import Image


def preview_bytes(path: Path, preview: str, channel: str) -> tuple[bytes, str]:
    """`preview` is `format;quality`; formats other than webp/jpeg, or an alpha channel, give webp."""
    parts = preview.split(";")
    fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    with Image.open(path) as img:
        out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img.copy()
    buffer = BytesIO()
    out.save(buffer, format=fmt, quality=min(max(quality, 1), 100))
    return buffer.getvalue(), f"image/{fmt}"


def channel_png(path: Path, channel: str) -> bytes:
    """`rgb`: the colour channels only; `a`: the alpha channel as an RGBA image (opaque if none)."""
    with Image.open(path) as img:
        if channel == "rgb":
            out = img.convert("RGB")
        else:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
    buffer = BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()
