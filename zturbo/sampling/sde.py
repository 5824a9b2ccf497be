"""Stochastic samplers (ancestral and SDE) in ComfyUI's flow-model ("CONST") variants.

Noise comes only from the seeded noise samplers in `zturbo.sampling.noise`, never from the
global RNG, so a seed reproduces a run. Flow models have α_σ = 1 - σ, so the half log-SNR is
λ = log((1-σ)/σ) = -logit(σ); a first sigma of 1 (λ = -∞) is moved to `percent_to_sigma(1e-4)`
exactly as ComfyUI's `offset_first_sigma_for_snr` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch, to_d
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


def rf_ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """ComfyUI's ancestral split for rectified flow: σ_d, the rescale α'/α_d and the renoise amount.

    σ_d = σ'·(1 + (σ'/σ - 1)·η) (= σ'²/σ at η = 1); after a deterministic step to σ_d, x is
    rescaled by α'/α_d (α = 1 - σ) and gets sqrt(σ'² - σ_d²α'²/α_d²) of fresh noise, so that
    the marginal at σ' is again (1-σ')·x0 + σ'·noise.
    """
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


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

    ComfyUI switches to this variant for CONST models: a deterministic step down to σ_d, then
    the rescale and fresh noise of `rf_ancestral_step`. The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down, rescale, renoise = rf_ancestral_step(sigmas[i], sigmas[i + 1])
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * renoise
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver-2 ancestral for rectified flow (ComfyUI `sample_dpm_2_ancestral_RF`, eta 1).

    The `sample_dpm_2` step (slope at the log-midpoint) down to σ_d, then `rf_ancestral_step`'s
    rescale and noise. The step to 0 is an Euler step. ComfyUI's KSampler gives it one extra
    step and drops the penultimate sigma.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        sigma_down, rescale, renoise = rf_ancestral_step(sigmas[i], sigmas[i + 1])
        notify(callback, i, sigmas, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
            continue
        sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigmas[i])
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_batch(sigma_mid, x)))
        x = x + d_2 * (sigma_down - sigmas[i])
        x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * renoise
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver++(2S) ancestral for rectified flow (ComfyUI `sample_dpmpp_2s_ancestral_RF`, eta 1).

    A single-step second-order step to σ_d: the model is evaluated at σ_s, the λ-midpoint of σ
    and σ_d (λ = log((1-σ)/σ); ComfyUI uses σ_s = 0.9999 when σ = 1), reached by the flow's exact
    interpolation u = (σ_s/σ)·x + (1 - σ_s/σ)·D; then x ← (σ_d/σ)·x + (1 - σ_d/σ)·D_s and
    `rf_ancestral_step`'s rescale and noise. The step to 0 is an Euler step.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        sigma_down, rescale, renoise = rf_ancestral_step(sigmas[i], sigmas[i + 1])
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            continue
        sigma_s = 0.9999 if sigmas[i] == 1.0 else _rf_lambda_midpoint(sigmas[i], sigma_down)
        ratio_s = sigma_s / sigmas[i]
        u = ratio_s * x + (1 - ratio_s) * denoised
        denoised_s = model(u, sigma_batch(sigma_s, x))
        ratio_down = sigma_down / sigmas[i]
        x = ratio_down * x + (1 - ratio_down) * denoised_s
        x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * renoise
    return x


def _rf_lambda_midpoint(sigma: Tensor, sigma_to: Tensor) -> Tensor:
    """The σ halfway between σ and σ_to in λ = log((1-σ)/σ), with ComfyUI's formulas for λ and σ(λ)."""
    lam, lam_to = ((1 - sigma) / sigma).log(), ((1 - sigma_to) / sigma_to).log()
    lam_s = lam + 0.5 * (lam_to - lam)
    return (lam_s.exp() + 1) ** -1


def _brownian(x: Tensor, sigmas: Tensor, seed: int) -> BrownianTreeNoiseSampler:
    """The Brownian tree over [smallest positive sigma, largest sigma], built before the offset."""
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)


def dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None,
    seed: int,
    shift: float,
    *,
    solver: str,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, arXiv:2211.01095), eta 1, in λ = -logit σ.

    ComfyUI's defaults: data-prediction SDE step x ← (σ'/σ)e^(-h)·x + α'(1 - e^(-2h))·D, a
    second-order correction from D - D_prev with r = h_prev/h, `solver` "midpoint"
    (0.5·α'(1 - e^(-2h))/r) or "heun" (α'((1 - e^(-2h))/(-2h) + 1)/r), and Brownian-tree noise
    scaled by σ'·sqrt(1 - e^(-2h)), with α' = σ'e^(λ') = 1 - σ'. The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    if len(sigmas) <= 1:
        return x
    noise_sampler = _brownian(x, sigmas, seed)
    sigmas = offset_first_sigma(sigmas, shift)
    old_denoised: Tensor | None = None
    h: Tensor | None = None
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
                if solver == "heun":
                    weight = alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1)
                else:
                    weight = 0.5 * alpha_t * (-h_eta).expm1().neg()
                x = x + weight * (1 / r) * (denoised - old_denoised)
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            x = x + noise * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        old_denoised, h_last = denoised, h
    return x


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
    """DPM-Solver++(2M) SDE, midpoint correction (see `dpmpp_2m_sde`)."""
    return dpmpp_2m_sde(model, x, sigmas, callback, seed, shift, solver="midpoint")


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver++(2M) SDE, Heun correction (see `dpmpp_2m_sde`)."""
    return dpmpp_2m_sde(model, x, sigmas, callback, seed, shift, solver="heun")


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver++(3M) SDE, eta 1, in λ = -logit σ, Brownian-tree noise (ComfyUI `sample_dpmpp_3m_sde`).

    The first-order SDE step of `dpmpp_2m_sde`, then with one previous estimate the 2M term
    α'φ2·(D - D_1)/r, with two the 3M terms α'φ2·d1 - α'φ3·d2 from divided differences of
    D, D_1, D_2 (r0 = h_1/h, r1 = h_2/h), where φ2 = (e^(-2h) - 1)/(2h) + 1, φ3 = φ2/(2h) - 1/2.
    """
    sigmas = prepare_sigmas(x, sigmas)
    if len(sigmas) <= 1:
        return x
    noise_sampler = _brownian(x, sigmas, seed)
    sigmas = offset_first_sigma(sigmas, shift)
    denoised_1: Tensor | None = None
    denoised_2: Tensor | None = None
    h: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
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
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None and denoised_1 is not None:
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            x = x + noise * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
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


@torch.no_grad()
def sample_ddpm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DDPM ancestral steps (Ho et al. 2020, eq. 11) in ComfyUI's variance-preserving form.

    ComfyUI applies the VP formulas whatever the model: x is scaled by 1/sqrt(1+σ²), with
    ᾱ = 1/(1+σ²) and α = ᾱ/ᾱ', x ← (x - (1-α)·ε/sqrt(1-ᾱ))/sqrt(α) plus
    sqrt((1-α)(1-ᾱ')/(1-ᾱ)) of fresh noise, then scaled back by sqrt(1+σ'²); ε = (x - D)/σ.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(sigma, x))
        notify(callback, i, sigmas, x, denoised)
        eps = (x - denoised) / sigma
        alpha_bar, alpha_bar_next = 1 / ((sigma * sigma) + 1), 1 / ((sigma_next * sigma_next) + 1)
        alpha = alpha_bar / alpha_bar_next
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        x = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_bar).sqrt())
        if sigma_next > 0:
            spread = ((1 - alpha) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar)).sqrt()
            x = x + spread * noise_sampler(sigma, sigma_next)
        if sigma_next != 0:
            x = x * torch.sqrt(1.0 + sigma_next**2.0)
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Latent-consistency sampling (Luo et al. 2023): jump to D, re-noise to σ' with fresh noise.

    The re-noising is the flow interpolation σ'·noise + (1-σ')·D (ComfyUI's `noise_scaling` of a
    CONST model). The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1]) + (1.0 - sigmas[i + 1]) * x
    return x
