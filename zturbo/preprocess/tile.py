"""The `tile` control map: the image downscaled (area) and upscaled back (bicubic), i.e. its content
without fine detail, which the Tile ControlNets (and the Union ones in tile mode) re-synthesise."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from zturbo.errors import InputError


def tile_image(image: torch.Tensor, factor: float = 4.0) -> torch.Tensor:
    """IMAGE [B, H, W, C] → IMAGE [B, H, W, 3]: area-downscaled by `factor`, bicubic-upscaled back."""
    if not 1.0 <= factor <= 64.0:
        raise InputError(f"tile factor must be between 1 and 64 (got {factor})")
    x = image[..., :3].movedim(-1, 1).float()
    height, width = x.shape[-2:]
    small = (max(1, round(height / factor)), max(1, round(width / factor)))
    x = F.interpolate(F.interpolate(x, size=small, mode="area"), size=(height, width), mode="bicubic")
    return x.clamp(0.0, 1.0).movedim(1, -1)
