"""Image and latent resizing under ComfyUI's method names (`comfy.utils.common_upscale`).

Tensors here are channels-first [B, C, H, W]; image nodes move IMAGE's channels-last layout in and out.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

INTERPOLATE_MODES = {"nearest-exact", "bilinear", "area", "bicubic"}


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize [B, C, H, W] to (height, width) with a ComfyUI method, optionally centre-cropping first
    so the aspect ratio matches (crop="center")."""
    if crop == "center":
        samples = _center_crop(samples, width, height)
    if method in INTERPOLATE_MODES:
        return F.interpolate(samples, size=(height, width), mode=method)
    if method == "lanczos":
        return lanczos(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    raise ValueError(f"unknown upscale method {method!r}")


def _center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., y : old_h - y, x : old_w - x]


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos on 8-bit images, as ComfyUI does (so results match it, quantisation included)."""
    out = []
    for image in samples.movedim(1, -1):
        array = np.clip(255.0 * image.cpu().float().numpy(), 0, 255).astype(np.uint8)
        pil = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
        resized = np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS))
        tensor = torch.from_numpy(resized.astype(np.float32) / 255.0)
        out.append(tensor.unsqueeze(-1) if tensor.ndim == 2 else tensor)
    return torch.stack(out).movedim(-1, 1).to(samples.device, samples.dtype)


def _slerp(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of channel vectors (dim 1); magnitudes are interpolated linearly.
    Nearly parallel or zero vectors fall back to plain linear interpolation."""
    norm_a = a.norm(dim=1, keepdim=True)
    norm_b = b.norm(dim=1, keepdim=True)
    unit_a = a / norm_a.clamp_min(1e-12)
    unit_b = b / norm_b.clamp_min(1e-12)
    cos = (unit_a * unit_b).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    linear = sin.abs() < 1e-4
    safe_sin = torch.where(linear, torch.ones_like(sin), sin)
    direction = (torch.sin((1 - ratio) * omega) * unit_a + torch.sin(ratio * omega) * unit_b) / safe_sin
    result = direction * (norm_a * (1 - ratio) + norm_b * ratio)
    return torch.where(linear, a * (1 - ratio) + b * ratio, result)


def _slerp_axis(samples: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    old = samples.shape[axis]
    pos = (torch.arange(size, dtype=torch.float32) + 0.5) * old / size - 0.5
    pos = pos.clamp(0, old - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=old - 1)
    shape = [1] * samples.ndim
    shape[axis] = size
    ratio = (pos - lo).view(shape).to(samples.dtype)
    return _slerp(samples.index_select(axis, lo), samples.index_select(axis, hi), ratio)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resizing that slerps between neighbouring latent vectors instead of averaging them,
    which keeps latent magnitudes (what ComfyUI's "bislerp" is for)."""
    dtype = samples.dtype
    x = samples.float()
    x = _slerp_axis(x, width, 3)
    x = _slerp_axis(x, height, 2)
    return x.to(dtype)
