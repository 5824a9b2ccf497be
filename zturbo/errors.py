"""One exception hierarchy for everything a user can get wrong or run into.

Messages are written for people: they name the file, node or field and say what was expected.
The server maps these classes to HTTP codes in one place; the CLI prints the message without a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path


class ZTurboError(Exception):
    """Base class: the message is shown to the user as is."""


class InputError(ZTurboError, ValueError):
    """A parameter, request field or workflow value is invalid."""


class ModelFileError(ZTurboError):
    """A model file is unreadable, of the wrong kind, or unsafe to load."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class MissingModelError(ZTurboError):
    """A required model file is not where we looked for it."""


class GenerationError(ZTurboError):
    """Sampling produced something unusable (NaN/inf latents, ...)."""


class NonFiniteError(GenerationError):
    """A model produced NaN/inf values (the engine's watchdog retries once on a safer path)."""


class Interrupted(ZTurboError):
    """The user cancelled the job."""


# Images that come from outside (uploads, LoadImage, `/view` previews) are decoded only up to this many
# pixels: 8192², 1 GB as LoadImage's float tensors. A 20 KB PNG can declare 20000×20000 (1.6 GB decoded).
MAX_IMAGE_PIXELS = 8192 * 8192


class ImageTooLargeError(InputError):
    """An image declares more pixels than zturbo decodes (a decompression bomb, or just too big)."""

    @classmethod
    def check(
        cls, width: int, height: int, what: str, limit: int = MAX_IMAGE_PIXELS, frames: int = 1
    ) -> None:
        """Raise unless `frames` images of `width`×`height` fit in `limit` pixels (read from the header)."""
        pixels = width * height * max(frames, 1)
        if pixels > limit:
            shown = f"{frames} frames of {width}×{height}" if frames > 1 else f"{width}×{height}"
            raise cls(
                f"{what}: the image is {shown} ({pixels / 1e6:.0f} megapixels); at most "
                f"{limit / 1e6:.0f} megapixels are decoded (a decompression bomb, or too large: scale it down)"
            )

    @classmethod
    def from_pillow(cls, exc: Exception, what: str, limit: int = MAX_IMAGE_PIXELS) -> ImageTooLargeError:
        """Ours, for Pillow's `DecompressionBombError` (raised on open, past its own 179-megapixel limit)."""
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(found.group(1)) / 1e6:.0f} megapixels)" if found else ""
        return cls(
            f"{what}: the image is too large{size}; at most {limit / 1e6:.0f} megapixels are decoded "
            "(refused as a decompression bomb)"
        )
