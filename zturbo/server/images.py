"""Images from clients, opened with their size checked before any pixel is decoded (a 20 KB PNG can
declare 20000×20000), and re-encoded for `/view` (`preview=webp;90`, `channel=rgb|a`) off the loop."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import IO

from PIL import Image

from zturbo.errors import MAX_IMAGE_PIXELS, InputError
from zturbo.images import open_image


def opened(source: Path | IO[bytes], what: str, limit: int = MAX_IMAGE_PIXELS):
    """The image, lazily opened (header only), through the one checked open every input uses
    (`zturbo.images.open_image`): `ImageTooLargeError` past `limit` pixels, `InputError` otherwise."""
    return open_image(source, what, limit)


def _decode(img: Image.Image, what: str, convert: str | None = None) -> Image.Image:
    try:
        return img.convert(convert) if convert else img.copy()
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InputError(f"{what} could not be decoded ({exc})") from None


def preview_bytes(path: Path, preview: str, channel: str, limit: int = MAX_IMAGE_PIXELS) -> tuple[bytes, str]:
    """`preview` is `format;quality`; formats other than webp/jpeg, or an alpha channel, give webp."""
    parts = preview.split(";")
    fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    with opened(path, path.name, limit) as img:
        out = _decode(img, path.name, "RGB" if fmt == "jpeg" or channel == "rgb" else None)
    if fmt == "webp" and max(out.size) > 16383:  # the WebP format's limit
        fmt = "jpeg" if max(out.size) <= 65500 else "png"
        out = out.convert("RGB") if fmt == "jpeg" else out
    buffer = BytesIO()
    out.save(buffer, format=fmt, quality=min(max(quality, 1), 100))
    return buffer.getvalue(), f"image/{fmt}"


def channel_png(path: Path, channel: str, limit: int = MAX_IMAGE_PIXELS) -> bytes:
    """`rgb`: the colour channels only; `a`: the alpha channel as an RGBA image (opaque if none)."""
    with opened(path, path.name, limit) as img:
        if channel == "rgb":
            out = _decode(img, path.name, "RGB")
        else:
            alpha = _decode(img, path.name).getchannel("A") if "A" in img.getbands() else None
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha if alpha is not None else Image.new("L", img.size, 255))
    buffer = BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()
