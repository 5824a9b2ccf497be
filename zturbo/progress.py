"""The one progress callback every layer reports through.

`progress(value, total, preview)`: `value` counts finished steps (1..total); `preview` is a small PIL
image of the current estimate when one was asked for, else None. Raising inside it (`Interrupted`)
aborts the work that called it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

ProgressFn = Callable[[int, int, "Image.Image | None"], None]
