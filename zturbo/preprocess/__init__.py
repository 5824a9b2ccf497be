"""Control-map preprocessors: Canny (ComfyUI's node), tile, and passing through a given map.

Depth, pose and lineart maps need their own networks (MiDaS, DWPose, ...), which zturbo cannot
download: for those the user gives the already-preprocessed map (`prepare_control`'s "depth" /
"pose" / "lineart" / "raw" use the image as it is). `tile` is computed: a downscaled-then-upscaled copy.
"""

from __future__ import annotations

import torch

from zturbo.errors import InputError
from zturbo.preprocess.canny import canny_image
from zturbo.preprocess.tile import tile_image

CONTROL_TYPES = ("canny", "depth", "pose", "lineart", "tile", "raw")
GIVEN_MAPS = ("depth", "pose", "lineart", "raw")


def prepare_control(
    image: torch.Tensor, kind: str, *, low: float = 0.4, high: float = 0.8, tile_factor: float = 4.0
) -> torch.Tensor:
    """IMAGE [B, H, W, 3] → the control map for `kind` (see the module docstring)."""
    if kind == "canny":
        return canny_image(image, low, high)
    if kind == "tile":
        return tile_image(image, tile_factor)
    if kind in GIVEN_MAPS:
        return image[..., :3]
    raise InputError(f"unknown control type {kind!r}; choose one of: {', '.join(CONTROL_TYPES)}")


__all__ = ["CONTROL_TYPES", "GIVEN_MAPS", "canny_image", "prepare_control", "tile_image"]
