"""Images users hand us (files, uploads, dropped pictures): one pixel cap and one checked open for all.

Every image input goes through `open_image`, which refuses what is not an image and what would decode
to more than `MAX_IMAGE_PIXELS` pixels (a decompression bomb: a small PNG that inflates to gigabytes),
before any pixel is decoded; errors name the input. The HTTP routes and the CLI use the same function,
so the limit is one number in one place.

`load_image` and `load_mask` give ComfyUI's LoadImage and LoadImageMask results: IMAGE [B, H, W, 3]
and MASK [B, H, W] float32 in 0..1.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from zturbo.errors import MAX_IMAGE_PIXELS, ImageTooLargeError, InputError

MASK_CHANNELS = ("alpha", "red", "green", "blue")  # LoadImageMask's choices

ImageSource = Path | str | bytes | BinaryIO | IO[bytes]


def check_pixels(width: int, height: int, what: str, frames: int = 1, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose decoded pixels (all frames together) exceed `limit` (ImageTooLargeError)."""
    ImageTooLargeError.check(width, height, what, limit, frames)


@contextmanager
def open_image(
    source: ImageSource, what: str | None = None, limit: int = MAX_IMAGE_PIXELS
) -> Iterator[Image.Image]:
    """Open an image (header only) after checking it is one and that its size is within `limit` pixels.

    `what` names the input in errors (default: the path). Decoding errors later on (a truncated
    file) are the caller's to wrap; `frames` does that.
    """
    name = what or (str(source) if isinstance(source, (str, Path)) else "image")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError.from_pillow(exc, name, limit) from None
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except UnidentifiedImageError:  # Pillow's message only repeats the (full) path
        raise InputError(f"{name}: not an image that can be read (expected a PNG, JPEG, WebP...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: not an image that can be read ({exc})") from None
    with img:
        check_pixels(img.width, img.height, name, getattr(img, "n_frames", 1), limit)
        yield img


def image_size(source: ImageSource, what: str | None = None) -> tuple[int, int]:
    """(width, height) from the header, after the same checks as `open_image`; EXIF rotation applied."""
    with open_image(source, what) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
        return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def frames(img: Image.Image, what: str) -> Iterator[Image.Image]:
    """The frames of an opened image, EXIF-rotated and decoded; a broken file is an InputError."""
    try:
        for raw in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(raw) or raw
            frame.load()
            yield frame
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{what}: the image data is damaged ({exc})") from None


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0)


def _alpha_mask(frame: Image.Image) -> torch.Tensor:
    """LoadImage's MASK: 1 − alpha; a 64×64 zero mask when the frame has no alpha (as ComfyUI)."""
    if "A" in frame.getbands():
        return 1.0 - _to_tensor(np.array(frame.getchannel("A")))
    if frame.mode == "P" and "transparency" in frame.info:
        return 1.0 - _to_tensor(np.array(frame.convert("RGBA").getchannel("A")))
    return torch.zeros((64, 64), dtype=torch.float32)


def load_image(source: ImageSource, what: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames the size of the first as IMAGE [B, H, W, 3] and MASK [B, H, W] (ComfyUI's LoadImage:
    16-bit `I` frames scaled by 1/255, MPO files give their first frame)."""
    name = what or (str(source) if isinstance(source, (str, Path)) else "image")
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    with open_image(source, name) as img:
        for frame in frames(img, name):
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if images and rgb.size != (images[0].shape[2], images[0].shape[1]):
                continue
            images.append(_to_tensor(np.array(rgb))[None])
            masks.append(_alpha_mask(frame)[None])
            if img.format == "MPO":
                break
    if len(images) > 1 and all(m.shape == masks[0].shape for m in masks):
        return torch.cat(images), torch.cat(masks)
    return images[0], masks[0]


def load_mask(source: ImageSource, channel: str = "red", what: str | None = None) -> torch.Tensor:
    """ComfyUI's LoadImageMask: one channel of the first frame as MASK [1, H, W]; "alpha" gives
    1 − alpha (transparent = masked). A grey or colour picture with white = 1 for "red"."""
    if channel not in MASK_CHANNELS:
        raise InputError(f"mask channel must be one of {', '.join(MASK_CHANNELS)} (got {channel!r})")
    name = what or (str(source) if isinstance(source, (str, Path)) else "mask")
    with open_image(source, name) as img:
        frame = next(frames(img, name))
        if frame.getbands() != ("R", "G", "B", "A"):
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            frame = frame.convert("RGBA")
        mask = _to_tensor(np.array(frame.getchannel(channel[0].upper())))
    return (1.0 - mask if channel == "alpha" else mask)[None]
