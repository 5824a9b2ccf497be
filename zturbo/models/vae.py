"""Flux VAE: latents ↔ images, with the Flux latent normalisation.

LATENT tensors follow ComfyUI's convention: raw VAE space. The sampler converts to the model's space
(`process_in`) and back (`process_out`); decode/encode here work in raw space.
"""

from __future__ import annotations

import torch
from torch import nn

from zturbo.errors import NonFiniteError

LATENT_CHANNELS = 16  # the Flux VAE's latent channels
SCALE = 0.3611
SHIFT = 0.1159


def process_in(latent: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent → the space the diffusion model works in."""
    return (latent - SHIFT) * SCALE


def process_out(latent: torch.Tensor) -> torch.Tensor:
    """Model-space latent → raw VAE latent (what the decoder expects)."""
    return latent / SCALE + SHIFT


@torch.no_grad()
def decode(vae: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    """Raw latents (B,16,h,w) → images (B,H,W,3) float32 in [0, 1].

    Raises `NonFiniteError` when the decoder's output holds NaN/inf (checked before the clamp, which
    would turn inf into white or black pixels): a black image is never returned silently.
    """
    param = next(vae.parameters())
    # torch types nn.Module attributes as `Tensor | Module`; `vae` is a diffusers AutoencoderKL
    image = vae.decode(latent.to(param.device, param.dtype), return_dict=False)[0]  # type: ignore[operator]
    if not bool(torch.isfinite(image).all()):
        what = str(param.dtype).removeprefix("torch.")
        raise NonFiniteError(f"the VAE decoded NaN/inf values computing in {what}")
    return ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)


@torch.no_grad()
def encode(vae: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Images (B,H,W,3) in [0, 1] → raw latents (distribution mode), cropped to multiples of 8."""
    param = next(vae.parameters())
    h, w = image.shape[1] // 8 * 8, image.shape[2] // 8 * 8
    x = image[:, :h, :w, :3].permute(0, 3, 1, 2).to(param.device, param.dtype) * 2.0 - 1.0
    return vae.encode(x, return_dict=False)[0].mode().float()  # type: ignore[operator]  # as in `decode`
