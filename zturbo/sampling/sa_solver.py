"""SA-Solver: stochastic Adams predictor-corrector (Xue et al. 2023, arXiv:2309.05019), ComfyUI's form.

Data prediction in λ = log(α/σ) (for flow models -logit σ): a predictor of order ≤ 3 and a
corrector of order ≤ 4 built from the last estimates' Lagrange interpolation in λ, integrated
exactly against the SDE's exponential kernel (`adams_coefficients`). The stochasticity τ is 1 for
σ' in [percent_to_sigma(0.8), percent_to_sigma(0.2)] and 0 elsewhere; noise comes from the default
noise sampler. `sa_solver_pece` re-evaluates the model after each correction (two calls a step).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch
from zturbo.sampling.noise import default_noise_sampler
from zturbo.sampling.schedules import percent_to_sigma
from zturbo.sampling.sde import half_log_snr, offset_first_sigma


def exponential_moments(s: Tensor, t: Tensor, order: int, tau: float) -> Tensor:
    """(1+τ²)·∫_s^t e^((1+τ²)(u - t))·u^p du for p < order, by repeated integration by parts.

    Term p is Σ_{q≤p} (-1)^(p-q)·(p!/q!)/(1+τ²)^(p-q)·(t^q - s^q·e^(-(1+τ²)h)); the factorial
    ratios come from lgamma, as ComfyUI computes them (their last bits decide the coefficients').
    """
    tau_mul = 1 + tau**2
    p = torch.arange(order, dtype=s.dtype)
    boundary = t**p - s**p * (-tau_mul * (t - s)).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_fact = (p + 1).lgamma()
    log_weights = log_fact.unsqueeze(1) - log_fact.unsqueeze(0)
    if tau > 0:
        log_weights = log_weights - depth * math.log(tau_mul)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (log_weights.exp() * signs).tril() @ boundary


def adams_coefficients(
    sigma_to: Tensor, nodes: Tensor, lambda_s: Tensor, lambda_t: Tensor, tau: float
) -> Tensor:
    """Weights b_k of the estimates at λ = `nodes` for the step λ_s → λ_t (eqs. 15 and 18).

    The Lagrange basis integrals solve Vᵀ·b = moments with V the Vandermonde matrix of the nodes;
    the kernel's e^((1+τ²)λ_t) factor and σ' make the leading α' = σ'e^(λ_t).
    """
    moments = exponential_moments(lambda_s, lambda_t, nodes.shape[0], tau)
    basis_integrals = torch.linalg.solve(torch.vander(nodes, nodes.shape[0], increasing=True).T, moments)
    return sigma_to * lambda_t.exp() * basis_integrals


def _combine(estimates: list[Tensor], weights: Tensor) -> Tensor:
    """Σ_k w_k·D_k over the last len(weights) estimates (one tensordot over the stacked history)."""
    return torch.tensordot(torch.stack(estimates[-len(weights) :], dim=1), weights, dims=([1], [0]))


def sa_solver(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None,
    seed: int,
    shift: float,
    *,
    pece: bool,
) -> Tensor:
    """Predict x at σ' from x, correct the current x with the new estimate, then predict on.

    Predictor: x_pred' = (σ'/σ)e^(-τ²h)·x + Σ b_k·D_k (+ σ'·sqrt(1 - e^(-2τ²h)) of noise when τ > 0);
    corrector (from the second step; not on the step to 0 unless PECE): the same form over the
    interval just taken, with the estimate at the predicted point, plus that step's noise again.
    Orders fall to fit the steps left when the schedule ends in 0. Returns the last prediction.
    """
    sigmas = prepare_sigmas(x, sigmas)
    if len(sigmas) <= 1:
        return x
    noise_sampler = default_noise_sampler(x, seed)
    sigmas = offset_first_sigma(sigmas, shift)
    lambdas = half_log_snr(sigmas)
    start, end = percent_to_sigma(0.2, shift), percent_to_sigma(0.8, shift)
    to_end = sigmas[-1].item() == 0
    n = len(sigmas)
    x_pred, tau, h, noise = x, 0.0, torch.zeros(()), None
    estimates: list[Tensor] = []
    for i in range(n - 1):
        denoised = model(x_pred, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x_pred, denoised)
        estimates = [*estimates, denoised][-4:]
        p_order = min(3, len(estimates))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not pece) else min(4, len(estimates))
        if to_end:
            p_order, c_order = min(p_order, n - 2 - i), min(c_order, n - 1 - i)

        if c_order == 0:
            x = x_pred
        else:
            b = adams_coefficients(
                sigmas[i], lambdas[i - c_order + 1 : i + 1], lambdas[i - 1], lambdas[i], tau
            )
            x = sigmas[i] / sigmas[i - 1] * (-(tau**2) * h).exp() * x + _combine(estimates, b)
            if tau > 0 and noise is not None:
                x = x + noise
            if pece:
                denoised = model(x, sigma_batch(sigmas[i], x))
                estimates[-1] = denoised

        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        sigma_next = sigmas[i + 1]
        tau = 1.0 if start >= sigma_next.item() >= end else 0.0
        b = adams_coefficients(sigma_next, lambdas[i - p_order + 1 : i + 1], lambdas[i], lambdas[i + 1], tau)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigma_next / sigmas[i] * (-(tau**2) * h).exp() * x + _combine(estimates, b)
        if tau > 0:
            noise = noise_sampler(sigmas[i], sigma_next) * sigma_next * (-2 * tau**2 * h).expm1().neg().sqrt()
            x_pred = x_pred + noise
    return x_pred


@torch.no_grad()
def sample_sa_solver(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """SA-Solver, predictor order 3, corrector order 4 (one model call a step)."""
    return sa_solver(model, x, sigmas, callback, seed, shift, pece=False)


@torch.no_grad()
def sample_sa_solver_pece(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """SA-Solver in PECE mode (predict, evaluate, correct, evaluate)."""
    return sa_solver(model, x, sigmas, callback, seed, shift, pece=True)
