"""Stochastic samplers (ancestral and SDE) in ComfyUI's flow-model ("CONST") variants.

Noise comes only from the seeded noise samplers in `zturbo.sampling.noise`, never from the
global RNG, so a seed reproduces a run. Flow models have α_σ = 1 - σ, so the half log-SNR is
λ = log((1-σ)/σ) = -logit(σ); a first sigma of 1 (λ = -∞) is moved to `percent_to_sigma(1e-4)`
exactly as ComfyUI's `offset_first_sigma_for_snr` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch
from zturbo.sampling.noise import BrownianTreeNoiseSampler, default_noise_sampler
from zturbo.sampling.schedules import percent_to_sigma


def half_log_snr(sigma: Tensor) -> Tensor:
    """λ = log(α/σ) = log((1-σ)/σ) for a flow model."""
    return sigma.logit().neg()


def sigma_from_half_log_snr(lam: Tensor) -> Tensor:
    """Inverse of `half_log_snr`: σ = 1/(1 + e^λ)."""
    return lam.neg().sigmoid()


def offset_first_sigma(sigmas: Tensor, shift: float) -> Tensor:
    """Move a first sigma >= 1 to `percent_to_sigma(1e-4)` so its log-SNR is finite."""
    if len(sigmas) <= 1 or sigmas[0] < 1:
        return sigmas
    sigmas = sigmas.clone()
    sigmas[0] = percent_to_sigma(1e-4, shift)
    return sigmas


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """k-diffusion `get_ancestral_step`: σ_down to step to deterministically, σ_up of fresh noise."""
    candidate = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_up = torch.where(candidate < sigma_to, candidate, sigma_to)  # Python min(): ties keep σ_to
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Euler ancestral for rectified flow (ComfyUI `sample_euler_ancestral_RF`, eta 1).

    ComfyUI switches to this variant for CONST models. Each step goes deterministically down to
    σ_d = σ'·(1 + (σ'/σ - 1)·η) = σ'²/σ, then rescales by (1-σ')/(1-σ_d) and adds fresh noise
    so that the marginal at σ' is again (1-σ')·x0 + σ'·noise. The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    eta = 1.0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down = sigmas[i + 1] * (1 + (sigmas[i + 1] / sigmas[i] - 1) * eta)
        alpha_next, alpha_down = 1 - sigmas[i + 1], 1 - sigma_down
        renoise = (sigmas[i + 1] ** 2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        x = (alpha_next / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * renoise
    return x


def _brownian(x: Tensor, sigmas: Tensor, seed: int) -> BrownianTreeNoiseSampler:
    """The Brownian tree over [smallest positive sigma, largest sigma], built before the offset."""
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, arXiv:2211.01095), midpoint, eta 1, in λ = -logit σ.

    ComfyUI's defaults: data-prediction SDE step x ← (σ'/σ)e^(-h)·x + α'(1 - e^(-2h))·D, a
    midpoint correction 0.5·α'(1 - e^(-2h))/r·(D - D_prev), and Brownian-tree noise scaled by
    σ'·sqrt(1 - e^(-2h)), with α' = σ'e^(λ') = 1 - σ'. The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    if len(sigmas) <= 1:
        return x
    noise_sampler = _brownian(x, sigmas, seed)
    sigmas = offset_first_sigma(sigmas, shift)
    old_denoised: Tensor | None = None
    h_last: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * 2.0
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            x = x + noise * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver++ SDE, two stages per step (ComfyUI `sample_dpmpp_sde`, eta 1, r = 1/2).

    Each step takes an ancestral half step in λ to s1, evaluates the model there, then a full
    ancestral step from the estimate at s1 (weight 1/(2r) = 1); both stages add Brownian-tree
    noise. Two model calls per step except the step to 0, which returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    if len(sigmas) <= 1:
        return x
    noise_sampler = _brownian(x, sigmas, seed)
    sigmas = offset_first_sigma(sigmas, shift)
    r = 0.5
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        lambda_s1 = lambda_s + r * (lambda_t - lambda_s)
        sigma_s1 = sigma_from_half_log_snr(lambda_s1)
        alpha_s, alpha_s1 = sigmas[i] * lambda_s.exp(), sigma_s1 * lambda_s1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()

        x_2, sigma_up = _dpmpp_sde_stage(x, denoised, lambda_s, lambda_s1, alpha_s, alpha_s1)
        x_2 = x_2 + alpha_s1 * noise_sampler(sigmas[i], sigma_s1) * sigma_up
        denoised_2 = model(x_2, sigma_batch(sigma_s1, x))

        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x, sigma_up = _dpmpp_sde_stage(x, denoised_d, lambda_s, lambda_t, alpha_s, alpha_t)
        x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def _dpmpp_sde_stage(
    x: Tensor, denoised: Tensor, lambda_s: Tensor, lambda_to: Tensor, alpha_s: Tensor, alpha_to: Tensor
) -> tuple[Tensor, Tensor]:
    """Deterministic part of a DPM++ SDE stage (down to the ancestral λ), and the σ_up to add."""
    sigma_down, sigma_up = ancestral_step(lambda_s.neg().exp(), lambda_to.neg().exp())
    h = sigma_down.log().neg() - lambda_s
    x = (alpha_to / alpha_s) * (-h).exp() * x - alpha_to * (-h).expm1() * denoised
    return x, sigma_up


def _er_sde_scaler(v: Tensor) -> Tensor:
    """ER-SDE's default noise scaler f(λ) = λ·(e^(λ^0.3) + 10) (Cui et al. 2023)."""
    return v * ((v**0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Extended reverse-time SDE solver, 3 stages (Cui et al. 2023, arXiv:2309.06169; ComfyUI `er_sde`).

    Works in λ_er = σ/α = σ/(1-σ): a first-order step scaled by r = f(λ')/f(λ), second and third
    order corrections from divided differences of D (their integrals are 200-point Riemann sums),
    then fresh noise α'·sqrt(λ'² - λ²r²). The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    sigmas = offset_first_sigma(sigmas, shift)
    lambdas = half_log_snr(sigmas).neg().exp()
    old_denoised: Tensor | None = None
    old_d: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            alpha_s, alpha_t = sigmas[i] / lambdas[i], sigmas[i + 1] / lambdas[i + 1]
            r = _er_sde_scaler(lambdas[i + 1]) / _er_sde_scaler(lambdas[i])
            x = alpha_t / alpha_s * r * x + alpha_t * (1 - r) * denoised
            if old_denoised is not None:
                x, old_d = _er_sde_corrections(x, denoised, old_denoised, old_d, lambdas, i, alpha_t)
            spread = (lambdas[i + 1] ** 2 - lambdas[i] ** 2 * r**2).sqrt().nan_to_num(nan=0.0)
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * spread
        old_denoised = denoised
    return x


def _er_sde_corrections(
    x: Tensor,
    denoised: Tensor,
    old_denoised: Tensor,
    old_d: Tensor | None,
    lambdas: Tensor,
    i: int,
    alpha_t: Tensor,
) -> tuple[Tensor, Tensor]:
    """Second (and from step 2, third) order ER-SDE terms; returns x and this step's difference dD."""
    lam_s, lam_t = lambdas[i], lambdas[i + 1]
    dt = lam_t - lam_s
    step = -dt / 200.0
    lambda_pos = lam_t + torch.arange(0, 200.0, dtype=torch.float32) * step
    scaled_pos = _er_sde_scaler(lambda_pos)
    s = torch.sum(1 / scaled_pos) * step
    denoised_d = (denoised - old_denoised) / (lam_s - lambdas[i - 1])
    x = x + alpha_t * (dt + s * _er_sde_scaler(lam_t)) * denoised_d
    if old_d is not None:
        s_u = torch.sum((lambda_pos - lam_s) / scaled_pos) * step
        denoised_u = (denoised_d - old_d) / ((lam_s - lambdas[i - 2]) / 2)
        x = x + alpha_t * ((dt**2) / 2 + s_u * _er_sde_scaler(lam_t)) * denoised_u
    return x, denoised_d
