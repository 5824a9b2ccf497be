"""Flow-model sampling with ComfyUI-identical numerics: schedules, samplers, seeded noise.

`sample` is the one entry point the engine needs; the submodules hold the pieces:
`schedules` (sigmas by ComfyUI scheduler name), `samplers` (samplers by ComfyUI name), `noise`
(ComfyUI's seeded starting noise and the samplers' noise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from zturbo.errors import InputError
from zturbo.sampling.base import Denoiser, GuidedDenoiser, SamplerFn, StepCallback
from zturbo.sampling.noise import seeded_noise
from zturbo.sampling.samplers import (
    DISCARD_PENULTIMATE_SIGMA,
    SAMPLERS,
    UNCOND_SAMPLERS,
    evaluates_negative,
    get_sampler,
)
from zturbo.sampling.schedules import SCHEDULERS, flow_sigma_table, get_sigmas


def noise_scaling(sigma: Tensor, noise: Tensor, latent: Tensor) -> Tensor:
    """ComfyUI `CONST.noise_scaling`: the flow interpolation σ·noise + (1-σ)·latent.

    ComfyUI's `max_denoise` flag (noise·sqrt(1+σ²) for EPS models) is ignored by CONST models,
    so there is no such case here.
    """
    return sigma * noise + (1.0 - sigma) * latent


def inverse_noise_scaling(sigma: Tensor, x: Tensor) -> Tensor:
    """ComfyUI `CONST.inverse_noise_scaling`: x / (1-σ_last); the identity when sigmas end in 0."""
    return x / (1.0 - sigma)


def sample(
    sampler: str,
    model: Denoiser,
    noise: Tensor,
    latent: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    shift: float = 3.0,
) -> Tensor:
    """Run `sampler` from `noise` and `latent` over `sigmas`, as ComfyUI's KSampler does.

    `latent` is the model-space starting latent (zeros for text-to-image; the caller applies the
    latent format's process_in to a non-empty one, as ComfyUI does). Noise and latent are used in
    float32 on `noise`'s device; the start is `σ0·noise + (1-σ0)·latent`. Empty `sigmas`
    (denoise 0) return `latent` unchanged. `seed` seeds the sampler's own noise; `shift` is the
    model's flow shift (used by the SDE samplers). Returns float32 model-space latents.
    """
    sampler_fn = get_sampler(sampler)
    if sigmas.ndim != 1:
        raise InputError(f"sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
    if noise.shape != latent.shape:
        raise InputError(f"noise shape {tuple(noise.shape)} differs from latent shape {tuple(latent.shape)}")
    if sigmas.numel() == 0:
        return latent
    sigmas = sigmas.detach().to(device="cpu", dtype=torch.float32)
    noise = noise.to(dtype=torch.float32)
    latent = latent.to(device=noise.device, dtype=torch.float32)
    with torch.no_grad():
        x = noise_scaling(sigmas[0], noise, latent)
        x = sampler_fn(model, x, sigmas, callback=callback, seed=seed, shift=shift)
        return inverse_noise_scaling(sigmas[-1], x)


__all__ = [
    "DISCARD_PENULTIMATE_SIGMA",
    "SAMPLERS",
    "SCHEDULERS",
    "UNCOND_SAMPLERS",
    "Denoiser",
    "GuidedDenoiser",
    "SamplerFn",
    "StepCallback",
    "evaluates_negative",
    "flow_sigma_table",
    "get_sampler",
    "get_sigmas",
    "inverse_noise_scaling",
    "noise_scaling",
    "sample",
    "seeded_noise",
]
