"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) with fixed or adaptive steps: `dpm_fast`, `dpm_adaptive`.

k-diffusion's noise-prediction form in t = -log σ, ε = (x - D)/σ, eta 0 (ComfyUI's defaults). These
two ignore the schedule's spacing: they integrate from σ_0 to the last positive sigma (ComfyUI
passes σ_max = sigmas[0], σ_min = the last nonzero sigma) and return the state there, with its
remaining noise. `dpm_fast` spends len(sigmas) - 1 model calls in third-order steps; `dpm_adaptive`
picks its own steps (DPM-Solver-23 with a PI step-size controller).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from zturbo.errors import InputError
from zturbo.sampling.base import Denoiser, StepCallback, prepare_sigmas, sigma_batch

Eps = Callable[[Tensor, Tensor], Tensor]


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _eps_fn(model: Denoiser, x0: Tensor) -> Eps:
    """ε(x, t) = (x - D(x, σ(t)))/σ(t)."""
    return lambda x, t: (x - model(x, sigma_batch(_sigma(t), x0))) / _sigma(t)


def dpm_solver_2_step(
    eps_fn: Eps, x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor, r1: float
) -> tuple[Tensor, Tensor]:
    """DPM-Solver-2 from t to t_next with the intermediate point at t + r1·h; returns x and ε there."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = eps_fn(u1, s1)
    x_2 = x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
    return x_2, eps_r1


def dpm_solver_3_step(
    eps_fn: Eps, x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor, eps_r1: Tensor | None = None
) -> Tensor:
    """DPM-Solver-3 from t to t_next (intermediate points at h/3 and 2h/3); `eps_r1` reuses ε at h/3."""
    r1, r2 = 1 / 3, 2 / 3
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_r1 is None:
        eps_r1 = eps_fn(x - _sigma(s1) * (r1 * h).expm1() * eps, s1)
    u2 = (
        x
        - _sigma(s2) * (r2 * h).expm1() * eps
        - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2 = eps_fn(u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _span(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """t at σ_max = sigmas[0] and at the last positive sigma, as ComfyUI's wrapper passes them."""
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    if sigma_min <= 0 or sigmas[0] <= 0:
        raise InputError("dpm_fast and dpm_adaptive need positive sigmas")
    return sigmas[0].log().neg(), sigma_min.log().neg()


def _fast_orders(nfe: int) -> list[int]:
    """Third-order steps, the remainder of `nfe` in one lower-order step at the end."""
    m = math.floor(nfe / 3) + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


@torch.no_grad()
def sample_dpm_fast(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver-Fast: steps uniform in t, orders from `_fast_orders(len(sigmas) - 1)`."""
    sigmas = prepare_sigmas(x, sigmas)
    if len(sigmas) <= 1:
        return x
    nfe = len(sigmas) - 1
    t_start, t_end = _span(sigmas)
    orders = _fast_orders(nfe)
    ts = torch.linspace(t_start, t_end, math.floor(nfe / 3) + 2)
    eps_fn = _eps_fn(model, x)
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        eps = eps_fn(x, t)
        if callback is not None:
            callback(i, nfe, x, x - _sigma(t) * eps)
        if order == 1:
            x = x - _sigma(t_next) * (t_next - t).expm1() * eps
        elif order == 2:
            x = dpm_solver_2_step(eps_fn, x, t, t_next, eps, 0.5)[0]
        else:
            x = dpm_solver_3_step(eps_fn, x, t, t_next, eps)
    return x


class _PIController:
    """k-diffusion's PID step-size controller with ComfyUI's gains (integral only, 1/order)."""

    def __init__(self, h: float, order: float, accept_safety: float = 0.81, eps: float = 1e-8) -> None:
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b1, self.b2, self.b3 = 1.0 / order, -0.0 / order, 0.0 / order
        self.errs: list[float] = []

    def propose(self, error: Tensor) -> bool:
        """Scale h by 1 + atan(factor - 1); accept the step when the factor is >= accept_safety."""
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error] * 3
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver-23 with adaptive steps: a 2nd- and a 3rd-order estimate per try (three model calls,
    ε at h/3 shared), error = RMS of their difference over max(atol, rtol·max(|x_low|, |x_prev|))
    with rtol 0.05, atol 0.0078, first h 0.05 in t.

    The number of steps is the controller's: the callback gets ComfyUI's total (len(sigmas) - 1)
    and a step index clamped to it, as ComfyUI's progress bar clamps.
    """
    sigmas = prepare_sigmas(x, sigmas)
    if len(sigmas) <= 1:
        return x
    total = len(sigmas) - 1
    t_start, t_end = _span(sigmas)
    atol, rtol = torch.tensor(0.0078), torch.tensor(0.05)
    controller = _PIController(0.05, order=3)
    eps_fn = _eps_fn(model, x)
    s, x_prev, tries = t_start, x, 0
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + controller.h)
        eps = eps_fn(x, s)
        if callback is not None:
            callback(min(tries, total - 1), total, x, x - _sigma(s) * eps)
        x_low, eps_r1 = dpm_solver_2_step(eps_fn, x, s, t, eps, 1 / 3)
        x_high = dpm_solver_3_step(eps_fn, x, s, t, eps, eps_r1)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if controller.propose(error):
            x_prev, x, s = x_low, x_high, t
        tries += 1
    return x
