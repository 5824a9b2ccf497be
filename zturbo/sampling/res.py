"""RES second-order multistep (Zhang et al. 2023, arXiv:2308.02157) and its ComfyUI variants.

One routine covers ComfyUI's four names: `res_multistep` (eta 0), `res_multistep_ancestral`
(eta 1: k-diffusion's ancestral split of each step, also for flow models), and their CFG++
forms (Chung et al. 2024, arXiv:2406.08070), which step from the guided estimate with the
unconditional one's direction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch, to_d, uncond_of
from zturbo.sampling.noise import default_noise_sampler
from zturbo.sampling.sde import ancestral_step


def res_coefficients(h: Tensor, c2: Tensor) -> tuple[Tensor, Tensor]:
    """Weights b1, b2 of RES 2nd order: φ1(-h) - φ2(-h)/c2 and φ2(-h)/c2, NaN → 0 as ComfyUI."""
    phi1 = torch.expm1(-h) / -h
    phi2 = (torch.expm1(-h) / -h - 1.0) / -h
    b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
    b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
    return b1, b2


def res_multistep(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None,
    seed: int,
    *,
    eta: float,
    cfg_pp: bool,
) -> Tensor:
    """RES multistep in t = -log σ, each step going to σ_down and adding σ_up of fresh noise.

    With eta 0, σ_down = σ' and nothing is added. The first step and a step to σ_down = 0 are
    Euler steps; otherwise, with h = t(σ_down) - t and c2 = (t(σ_prev) - t(σ_down,prev))/h,
    x ← e^(-h)·x + h·(b1·D + b2·D_prev). CFG++ first moves x by D - D_uncond and uses the
    unconditional estimates in the update.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed) if eta > 0 else None
    old_denoised: Tensor | None = None
    old_sigma_down: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        uncond = uncond_of(model, denoised) if cfg_pp else denoised
        notify(callback, i, sigmas, x, denoised)
        sigma_down, sigma_up = (
            ancestral_step(sigmas[i], sigmas[i + 1], eta) if eta > 0 else (sigmas[i + 1], None)
        )
        if sigma_down == 0 or old_denoised is None or old_sigma_down is None:
            d = to_d(x, sigmas[i], uncond)
            x = denoised + d * sigma_down if cfg_pp else x + d * (sigma_down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            h = t_next - t
            c2 = (sigmas[i - 1].log().neg() - old_sigma_down.log().neg()) / h
            b1, b2 = res_coefficients(h, c2)
            if cfg_pp:
                x = x + (denoised - uncond)
            x = h.neg().exp() * x + h * (b1 * uncond + b2 * old_denoised)
        if noise_sampler is not None and sigma_up is not None and sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
        old_denoised, old_sigma_down = uncond, sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """RES second-order multistep, eta 0: the default sampler of the Z-Image-Turbo workflow.

    Step 0 and the step to 0 are Euler steps; otherwise, with t = -log σ, h = t' - t and
    c2 = (t_prev - t)/h (negative: the previous point lies behind), x ← e^(-h)·x + h·(b1·D + b2·D_prev).
    """
    return res_multistep(model, x, sigmas, callback, seed, eta=0.0, cfg_pp=False)


@torch.no_grad()
def sample_res_multistep_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """RES multistep with CFG++, eta 0."""
    return res_multistep(model, x, sigmas, callback, seed, eta=0.0, cfg_pp=True)


@torch.no_grad()
def sample_res_multistep_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """RES multistep with ancestral noise, eta 1 (k-diffusion's σ_down/σ_up split)."""
    return res_multistep(model, x, sigmas, callback, seed, eta=1.0, cfg_pp=False)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """RES multistep with ancestral noise (eta 1) and CFG++."""
    return res_multistep(model, x, sigmas, callback, seed, eta=1.0, cfg_pp=True)
