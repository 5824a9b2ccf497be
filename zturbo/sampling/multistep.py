"""Explicit multistep ODE solvers in σ from zju-pi's diff-solvers, as ComfyUI runs them.

`ipndm` (improved PNDM: Adams–Bashforth with fixed-step weights, Zhang & Chen 2023),
`ipndm_v` (the same with variable-step weights) and `deis` (Zhang & Chen 2023,
arXiv:2204.13902, "tAB" form: the weights integrate the Lagrange basis of past slopes against
the VP exponential-integrator kernel). All keep the last slopes d = (x - D)/σ; order 4 at most
(3 for DEIS).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch, to_d


def _push(history: list[Tensor], d: Tensor, size: int) -> list[Tensor]:
    """The last `size` slopes, oldest first."""
    return [*history, d][-size:]


@torch.no_grad()
def sample_ipndm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """iPNDM: Adams–Bashforth steps of order 1…4 with the fixed-step weights
    (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24. The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        order = min(4, i + 1)
        if sigmas[i + 1] == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + dt * d
        elif order == 2:
            x_next = x + dt * (3 * d - history[-1]) / 2
        elif order == 3:
            x_next = x + dt * (23 * d - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            x_next = x + dt * (55 * d - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = _push(history, d, 3)
        x = x_next
    return x


def ipndm_v_weights(sigmas: Tensor, i: int, order: int) -> list[Tensor]:
    """Variable-step Adams–Bashforth weights of d_i, d_{i-1}, … for the step σ_i → σ_{i+1}.

    Order 2…4, with h_n = σ_{i+1} - σ_i and h_{n-k} the earlier steps (diff-solvers' `ipndm_v`).
    """
    h_n = sigmas[i + 1] - sigmas[i]
    h_1 = sigmas[i] - sigmas[i - 1]
    w = [(2 + (h_n / h_1)) / 2, -(h_n / h_1) / 2]
    if order == 2:
        return w
    h_2 = sigmas[i - 1] - sigmas[i - 2]
    t1 = (1 - h_n / (3 * (h_n + h_1)) * (h_n * (h_n + h_1)) / (h_1 * (h_1 + h_2))) / 2
    if order == 3:
        return [w[0] + t1, w[1] - (1 + h_1 / h_2) * t1, t1 * h_1 / h_2]
    h_3 = sigmas[i - 2] - sigmas[i - 3]
    q = h_1 * (h_1 + h_2) / (h_2 * (h_2 + h_3))
    t2 = (
        ((1 - h_n / (3 * (h_n + h_1))) / 2 + (1 - h_n / (2 * (h_n + h_1))) * h_n / (6 * (h_n + h_1 + h_2)))
        * (h_n * (h_n + h_1) * (h_n + h_1 + h_2))
        / (h_1 * (h_1 + h_2) * (h_1 + h_2 + h_3))
    )
    return [
        w[0] + t1 + t2,
        w[1] - (1 + h_1 / h_2) * t1 - (1 + (h_1 / h_2) + q) * t2,
        t1 * h_1 / h_2 + ((h_1 / h_2) + q * (1 + h_2 / h_3)) * t2,
        -t2 * q * h_1 / h_2,
    ]


@torch.no_grad()
def sample_ipndm_v(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """iPNDM with variable-step weights (`ipndm_v_weights`), order 1…4. The step to 0 returns D."""
    sigmas = prepare_sigmas(x, sigmas)
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        order = min(4, i + 1)
        if sigmas[i + 1] == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (sigmas[i + 1] - sigmas[i]) * d
        else:
            weights = ipndm_v_weights(sigmas, i, order)
            combined = weights[0] * d
            for w, past in zip(weights[1:], reversed(history), strict=False):
                combined = combined + w * past
            x_next = x + (sigmas[i + 1] - sigmas[i]) * combined
        history = _push(history, d, 3)
        x = x_next
    return x


def _deis_vp_times(sigmas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DEIS's VP time for each σ, and the VP schedule's β0, β1 (diff-solvers' `edm2t` defaults).

    The linear-β VP schedule is fitted to σ ∈ [0.002, 80] over t ∈ [1e-3, 1] (the EDM range,
    whatever the model); t(σ) = (sqrt(β0² + 2β_d·log(1+σ²)) - β0)/β_d with β_d = β1 - β0.
    """
    eps_s, sigma_min, sigma_max = 1e-3, np.float32(0.002), np.float32(80.0)
    log_min, log_max = np.log(sigma_min**2 + 1), np.log(sigma_max**2 + 1)
    beta_d = torch.tensor(2 * (log_min / eps_s - log_max) / (eps_s - 1), dtype=torch.float32)
    beta_0 = torch.tensor(log_max, dtype=torch.float32) - 0.5 * beta_d
    times = ((beta_0**2 + 2 * beta_d * (sigmas**2 + 1).log()).sqrt() - beta_0) / beta_d
    return times, beta_0, beta_d + beta_0


def deis_weights(
    times: Tensor, i: int, order: int, beta_0: Tensor, beta_1: Tensor, n: int = 10000
) -> list[Tensor]:
    """tAB-DEIS weights of d_i, d_{i-1}, …: ∫ over [t_i, t_i+1] of the VP kernel times each
    Lagrange basis polynomial on t_i … t_{i-order+1}, as an n-point left Riemann sum.

    The kernel is -½·(d log ᾱ/dτ)/sqrt(ᾱ(1-ᾱ)) with log ᾱ(τ) = -½τ²(β1-β0) - τβ0 (its derivative
    in closed form, where diff-solvers differentiates with autograd: last-bit differences).
    """
    taus = torch.linspace(times[i], times[i + 1], n)
    dtau = (times[i + 1] - times[i]) / n
    log_alpha = -0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0
    alpha = log_alpha.exp()
    kernel = -0.5 * (-taus * (beta_1 - beta_0) - beta_0) / torch.sqrt(alpha * (1 - alpha))
    nodes = [times[i - k] for k in range(order)]
    weights = []
    for j in range(order):
        basis: Tensor | float = 1.0
        for k in range(order):
            if k != j:
                basis = basis * ((taus - nodes[k]) / (nodes[j] - nodes[k]))
        weights.append(torch.sum(kernel * basis) * dtau)
    return weights


@torch.no_grad()
def sample_deis(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DEIS (tAB, order ≤ 3): x' = x + Σ_j w_j·d_{i-j} with `deis_weights`; Euler for the first
    step and for the step to 0.
    """
    sigmas = prepare_sigmas(x, sigmas)
    times, beta_0, beta_1 = _deis_vp_times(sigmas)
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        order = 1 if sigmas[i + 1] <= 0 else min(3, i + 1)
        if order == 1:
            x_next = x + (sigmas[i + 1] - sigmas[i]) * d
        else:
            weights = deis_weights(times, i, order, beta_0, beta_1)
            x_next = x + weights[0] * d
            for w, past in zip(weights[1:], reversed(history), strict=False):
                x_next = x_next + w * past
        history = _push(history, d, 2)
        x = x_next
    return x
