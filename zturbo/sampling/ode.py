"""Deterministic samplers (probability-flow ODE solvers), ComfyUI's float32 operation order.

For a flow model x_σ = (1-σ)·x0 + σ·noise the ODE dx/dσ = (x - x0)/σ is exactly the velocity,
so a single Euler step with the true x0 lands on the data: these samplers differ only in how they
extrapolate x0 between steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch, to_d


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Euler steps in sigma (Karras et al. 2022, Algorithm 2 without churn): x += d·(σ' - σ)."""
    sigmas = prepare_sigmas(x, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        d = to_d(x, sigmas[i], denoised)
        notify(callback, i, sigmas, x, denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); Euler for the step to 0.

    Two model calls per step except the last.
    """
    sigmas = prepare_sigmas(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i] * 1.0  # ComfyUI's sigma * (gamma + 1) with gamma 0: same value
        denoised = model(x, sigma_batch(sigma_hat, x))
        d = to_d(x, sigma_hat, denoised)
        notify(callback, i, sigmas, x, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        denoised_2 = model(x_2, sigma_batch(sigmas[i + 1], x))
        d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
        x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2) in t = -log σ.

    First and last steps are first order: x ← (σ'/σ)·x - expm1(-h)·D. Otherwise the two last
    denoised estimates are combined with r = h_last/h: D' = (1 + 1/2r)·D - D_prev/2r. As in
    ComfyUI the log is of σ itself (not the flow log-SNR); the step to σ' = 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    old_denoised: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is not None and sigmas[i + 1] != 0:
            r = (t - sigmas[i - 1].log().neg()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        else:
            denoised_d = denoised
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _res_coefficients(h: Tensor, c2: Tensor) -> tuple[Tensor, Tensor]:
    """Weights b1, b2 of RES 2nd order: φ1(-h) - φ2(-h)/c2 and φ2(-h)/c2, NaN → 0 as ComfyUI."""
    phi1 = torch.expm1(-h) / -h
    phi2 = (torch.expm1(-h) / -h - 1.0) / -h
    b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
    b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
    return b1, b2


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
    """RES second-order multistep (Zhang et al. 2023, arXiv:2308.02157), ComfyUI eta 0.

    The default sampler of the Z-Image-Turbo workflow. Step 0 and the step to 0 are Euler steps;
    otherwise, with t = -log σ, h = t' - t and c2 = (t_prev - t)/h (negative: the previous point
    lies behind), x ← e^(-h)·x + h·(b1·D + b2·D_prev).
    """
    sigmas = prepare_sigmas(x, sigmas)
    old_denoised: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0 or old_denoised is None:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
            h = t_next - t
            c2 = (sigmas[i - 1].log().neg() - t) / h
            b1, b2 = _res_coefficients(h, c2)
            x = h.neg().exp() * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised = denoised
    return x
