"""Deterministic samplers (probability-flow ODE solvers), ComfyUI's float32 operation order.

For a flow model x_σ = (1-σ)·x0 + σ·noise the ODE dx/dσ = (x - x0)/σ is exactly the velocity,
so a single Euler step with the true x0 lands on the data: these samplers differ only in how they
extrapolate x0 between steps.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch, to_d, uncond_of


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
def sample_heunpp2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Heun++ (Carzit's sd-webui-samplers-scheduler, as in ComfyUI): up to three slopes per step.

    Euler steps to the schedule's end, a weighted Heun step the step before, and otherwise a third
    slope from an Euler step on to σ_{i+2}; the slopes are weighted w2 = σ_{i+1}/(kσ_0),
    w3 = σ_{i+2}/(kσ_0), w1 = 1 - w2 - w3 with k the number of slopes.
    """
    sigmas = prepare_sigmas(x, sigmas)
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        d = to_d(x, sigmas[i], denoised)
        notify(callback, i, sigmas, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigma_batch(sigmas[i + 1], x)))
        if sigmas[i + 2] == s_end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
        d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigma_batch(sigmas[i + 2], x)))
        w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver-2 in the Karras form (k-diffusion `sample_dpm_2`): the slope at the log-midpoint.

    σ_mid = sqrt(σ·σ'); an Euler half step to σ_mid, then the full step with σ_mid's slope. The
    step to 0 is an Euler step. ComfyUI's KSampler gives this sampler one extra step and drops the
    penultimate sigma (see `samplers.DISCARD_PENULTIMATE_SIGMA`).
    """
    sigmas = prepare_sigmas(x, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        d = to_d(x, sigmas[i], denoised)
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigmas[i])
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_batch(sigma_mid, x)))
        x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def lms_coefficient(sigmas: np.ndarray, i: int, j: int, order: int) -> float:
    """∫ over [σ_i, σ_i+1] of the Lagrange basis polynomial of σ_{i-j} on the nodes σ_i … σ_{i-order+1}.

    Evaluated like k-diffusion: `sigmas` is the float32 schedule as a NumPy array (so each factor is
    a float32 product, as NumPy computes it) and the integral is scipy's `quad` with epsrel 1e-4.
    """

    def basis(tau: float) -> float:
        value = 1.0
        for k in range(order):
            if k != j:
                value *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
        return value

    return integrate.quad(basis, sigmas[i], sigmas[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Linear multistep (Adams–Bashforth in σ, order 4; k-diffusion `sample_lms`).

    x' = x + Σ_j c_j·d_{i-j} with c_j the integral of the Lagrange basis of the last slopes
    (`lms_coefficient`); the order grows from 1 with the history. The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    sigmas_np = sigmas.numpy()
    order = 4
    slopes: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        slopes = [*slopes[-(order - 1) :], to_d(x, sigmas[i], denoised)]
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        cur_order = min(i + 1, order)
        step: Tensor | int = 0
        for j, d in enumerate(reversed(slopes)):
            step = step + lms_coefficient(sigmas_np, i, j, cur_order) * d
        x = x + step
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


@torch.no_grad()
def gradient_estimation(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None,
    *,
    cfg_pp: bool,
    gamma: float = 2.0,
) -> Tensor:
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and improving diffusion models
    from an optimization perspective"): Euler plus (γ-1)·(d - d_prev)·dt from the second step.

    With `cfg_pp` the slope is taken from the unconditional estimate and the Euler step starts from
    the guided one (x ← D + σ'·d, CFG++). The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    old_d: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        d = to_d(x, sigmas[i], uncond_of(model, denoised) if cfg_pp else denoised)
        notify(callback, i, sigmas, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if old_d is not None:
                x = x + (gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Gradient estimation sampler, γ = 2 (see `gradient_estimation`)."""
    return gradient_estimation(model, x, sigmas, callback, cfg_pp=False)


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Gradient estimation with CFG++ (Chung et al. 2024, arXiv:2406.08070), γ = 2."""
    return gradient_estimation(model, x, sigmas, callback, cfg_pp=True)
