"""Tiny random-weight ESRGAN (RRDBNet, Real-ESRGAN's "new arch" key names) files for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def esrgan_state_dict(
    num_feat: int = 8, num_grow: int = 32, num_blocks: int = 1, scale: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """RealESRGAN_x4plus's layout (conv_first, body.N.rdbK.convJ, conv_body, conv_up1/2, conv_hr,
    conv_last) at a tiny width (spandrel reads the growth channels as 32); weights small enough that the output stays in a useful range."""
    if scale not in (2, 4):
        raise ValueError("scale must be 2 or 4 (one or two nearest-neighbour upsamplings)")
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_ch: int, in_ch: int) -> None:
        std = 1.5 / (in_ch * 9) ** 0.5
        state[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=generator) * std
        state[f"{name}.bias"] = torch.randn(out_ch, generator=generator) * 0.01

    conv("conv_first", num_feat, 3)
    for b in range(num_blocks):
        for r in (1, 2, 3):
            for j in range(1, 5):
                conv(f"body.{b}.rdb{r}.conv{j}", num_grow, num_feat + (j - 1) * num_grow)
            conv(f"body.{b}.rdb{r}.conv5", num_feat, num_feat + 4 * num_grow)
    conv("conv_body", num_feat, num_feat)
    conv("conv_up1", num_feat, num_feat)
    if scale == 4:
        conv("conv_up2", num_feat, num_feat)
    conv("conv_hr", num_feat, num_feat)
    conv("conv_last", 3, num_feat)
    state["conv_last.bias"] += 0.5  # mid-grey output on average
    return state


def write_esrgan(path: Path, fmt: str = "safetensors", **kwargs: int) -> Path:
    """Write `esrgan_state_dict(**kwargs)` as safetensors or as a plain-tensor `.pth` (params_ema wrapped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = esrgan_state_dict(**kwargs)
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "pth":
        torch.save({"params_ema": state}, path)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return path


def compact_state_dict(num_feat: int = 4, num_conv: int = 1, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real-ESRGAN Compact (SRVGGNetCompact, "realesr-general" models): convs and PReLUs, pixel shuffle.
    Cheap enough to run a full 1-megapixel ×4 on a CPU in a test."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    channels = [(num_feat, 3)] + [(num_feat, num_feat)] * num_conv + [(3 * scale * scale, num_feat)]
    for i, (out_ch, in_ch) in enumerate(channels):
        state[f"body.{2 * i}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=generator) * 0.3 / in_ch**0.5
        state[f"body.{2 * i}.bias"] = torch.zeros(out_ch)
        if i < len(channels) - 1:
            state[f"body.{2 * i + 1}.weight"] = torch.full((num_feat,), 0.25)  # PReLU
    return state


def write_compact(path: Path, **kwargs: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(compact_state_dict(**kwargs), str(path))
    return path
