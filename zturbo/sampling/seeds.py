"""SEEDS (Gonzalez et al. 2023, arXiv:2305.14267) and the exponential Heun samplers built on it.

Stochastic explicit exponential derivative-free solvers in data prediction and λ = log(α/σ)
(for flow models λ = -logit σ, α = 1 - σ), ComfyUI's forms. With `eta` > 0 each stage adds noise,
and the noise of a stage is carried into the next one (decayed by e^((r_k - r_{k+1})hη)), so a
step's noise is one sample of the SDE's own increments. The first sigma of 1 is offset as in
`sde.offset_first_sigma`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch
from zturbo.sampling.noise import NoiseSampler, default_noise_sampler
from zturbo.sampling.sde import half_log_snr, offset_first_sigma, sigma_from_half_log_snr


def h_phi_2(h: Tensor) -> Tensor:
    """h·φ2(h) = (e^h - 1 - h)/h of exponential integrators (h·φ1(h) is `expm1`)."""
    return (torch.expm1(h) - h) / h


class _Stage:
    """The SDE noise carried from one stage to the next within a step (zero when eta is 0)."""

    def __init__(self, noise_sampler: NoiseSampler, eta: float) -> None:
        self.noise_sampler, self.eta = noise_sampler, eta
        self.noise: Tensor | None = None

    def first(self, r: float, h: Tensor, sigma: Tensor, sigma_to: Tensor) -> Tensor | None:
        """Noise for the first stage, over r·h: sqrt(1 - e^(-2rhη))·ξ."""
        if self.eta <= 0:
            return None
        self.noise = (-2 * r * h * self.eta).expm1().neg().sqrt() * self.noise_sampler(sigma, sigma_to)
        return self.noise

    def carry(self, segment: Tensor, sigma: Tensor, sigma_to: Tensor) -> Tensor | None:
        """Decay the carried noise by e^(segment) and add sqrt(1 - e^(2·segment)) of fresh noise."""
        if self.eta <= 0 or self.noise is None:
            return None
        fresh = segment.mul(2).expm1().neg().sqrt() * self.noise_sampler(sigma, sigma_to)
        self.noise = self.noise * segment.exp() + fresh
        return self.noise


def seeds_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None,
    seed: int,
    shift: float,
    *,
    eta: float,
    r: float,
    solver: str,
) -> Tensor:
    """Two-stage SEEDS: a stage to λ_s1 = λ + r·h, then the full step from D and D_s1.

    `solver` "phi_1" steps with the lerp of D and D_s1 at 1/(2r); "phi_2" weights them
    b1 = hφ1 - b2, b2 = hφ2/r (at -h(1+η)). The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    stage = _Stage(default_noise_sampler(x, seed), eta)
    sigmas = offset_first_sigma(sigmas, shift)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(sigma, x))
        notify(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s1 = sigma_from_half_log_snr(lambda_s1)
        alpha_s1, alpha_t = sigma_s1 * lambda_s1.exp(), sigma_next * lambda_t.exp()

        x_2 = sigma_s1 / sigma * (-r * h * eta).exp() * x - alpha_s1 * torch.expm1(-r * h_eta) * denoised
        noise = stage.first(r, h, sigma, sigma_s1)
        if noise is not None:
            x_2 = x_2 + noise * sigma_s1
        denoised_2 = model(x_2, sigma_batch(sigma_s1, x))

        decay = sigma_next / sigma * (-h * eta).exp() * x
        if solver == "phi_1":
            x = decay - alpha_t * torch.expm1(-h_eta) * torch.lerp(denoised, denoised_2, 1 / (2 * r))
        else:
            b2 = h_phi_2(-h_eta) / r
            x = decay - alpha_t * ((torch.expm1(-h_eta) - b2) * denoised + b2 * denoised_2)
        noise = stage.carry((r - 1) * h * eta, sigma_s1, sigma_next)
        if noise is not None:
            x = x + noise * sigma_next
    return x


@torch.no_grad()
def sample_seeds_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """SEEDS-2 (eta 1, r = 1/2, φ1 form), default-sampler noise."""
    return seeds_2(model, x, sigmas, callback, seed, shift, eta=1.0, r=0.5, solver="phi_1")


@torch.no_grad()
def sample_exp_heun_2_x0(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Exponential Heun, 2nd order, data prediction in λ: SEEDS-2 with r = 1, φ2 form, no noise."""
    return seeds_2(model, x, sigmas, callback, seed, shift, eta=0.0, r=1.0, solver="phi_2")


@torch.no_grad()
def sample_exp_heun_2_x0_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Stochastic exponential Heun: SEEDS-2 with r = 1, φ2 form, eta 1."""
    return seeds_2(model, x, sigmas, callback, seed, shift, eta=1.0, r=1.0, solver="phi_2")


@torch.no_grad()
def sample_seeds_3(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """SEEDS-3 (eta 1): stages at λ + h/3 and λ + 2h/3, then the step from D and D_s2.

    Stage 2 weights D, D_s1 by a_1 = hφ1 - a_2, a_2 = (r2/r1)·hφ2 (at -r2·h(1+η)); the step
    weights D, D_s2 by b1 = hφ1 - b3, b3 = hφ2/r2 (at -h(1+η)). The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    eta, r_1, r_2 = 1.0, 1.0 / 3, 2.0 / 3
    stage = _Stage(default_noise_sampler(x, seed), eta)
    sigmas = offset_first_sigma(sigmas, shift)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(sigma, x))
        notify(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s1, lambda_s2 = torch.lerp(lambda_s, lambda_t, r_1), torch.lerp(lambda_s, lambda_t, r_2)
        sigma_s1, sigma_s2 = sigma_from_half_log_snr(lambda_s1), sigma_from_half_log_snr(lambda_s2)
        alpha_s1, alpha_s2 = sigma_s1 * lambda_s1.exp(), sigma_s2 * lambda_s2.exp()
        alpha_t = sigma_next * lambda_t.exp()

        x_2 = sigma_s1 / sigma * (-r_1 * h * eta).exp() * x - alpha_s1 * torch.expm1(-r_1 * h_eta) * denoised
        x_2 = x_2 + _required(stage.first(r_1, h, sigma, sigma_s1)) * sigma_s1
        denoised_2 = model(x_2, sigma_batch(sigma_s1, x))

        a3_2 = r_2 / r_1 * h_phi_2(-r_2 * h_eta)
        a3_1 = torch.expm1(-r_2 * h_eta) - a3_2
        x_3 = sigma_s2 / sigma * (-r_2 * h * eta).exp() * x - alpha_s2 * (a3_1 * denoised + a3_2 * denoised_2)
        x_3 = x_3 + _required(stage.carry((r_1 - r_2) * h * eta, sigma_s1, sigma_s2)) * sigma_s2
        denoised_3 = model(x_3, sigma_batch(sigma_s2, x))

        b3 = h_phi_2(-h_eta) / r_2
        b1 = torch.expm1(-h_eta) - b3
        x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        x = x + _required(stage.carry((r_2 - 1) * h * eta, sigma_s2, sigma_next)) * sigma_next
    return x


def _required(noise: Tensor | None) -> Tensor:
    assert noise is not None, "SEEDS-3 always runs with eta > 0"
    return noise
