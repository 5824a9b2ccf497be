"""UniPC (Zhao et al. 2023, arXiv:2302.04867): unified predictor-corrector, multistep, order ≤ 3.

ComfyUI runs it (`uni_pc`: B(h) = h, "bh1"; `uni_pc_bh2`: B(h) = e^h - 1) in data prediction on a
variance-preserving view of the sigmas whatever the model: α(σ) = 1/sqrt(1+σ²), σ_vp = σ·α,
λ = log(α/σ_vp); x is carried as x/sqrt(1+σ²) and the denoiser sees it scaled back. The final sigma 0
is replaced by 0.001 (λ must stay finite), so the result is x/α(0.001) at σ = 0.001.

One ComfyUI quirk is reproduced: its uni_pc writes that 0.001 into the caller's schedule, so the
flow model's inverse noise scaling afterwards divides by 1 - 0.001 instead of 1. The samplers here
return that division already made (`sample` then divides by 1 - 0 = 1), which keeps the results
identical to ComfyUI's.

ComfyUI's KSampler gives these samplers one extra step and drops the penultimate sigma
(`samplers.DISCARD_PENULTIMATE_SIGMA`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, prepare_sigmas


def _log_alpha(sigma: Tensor) -> Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: Tensor) -> Tensor:
    return torch.exp(_log_alpha(sigma))


def _std(sigma: Tensor) -> Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma: Tensor) -> Tensor:
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.view(-1, *([1] * (x.ndim - 1)))


DataFn = Callable[[Tensor, Tensor], Tensor]


def _data_prediction(model: Denoiser) -> DataFn:
    """x0 from the VP-scaled state: ε from the denoiser at x·sqrt(1+σ²), then (x - σ_vp·ε)/α."""

    def x0(x: Tensor, t: Tensor) -> Tensor:
        sigma = _per_sample(t, x)
        scaled = x * ((sigma**2 + 1.0) ** 0.5)
        eps = (scaled - model(scaled, t)) / sigma
        return (x - _per_sample(_std(t), x) * eps) / _per_sample(_alpha(t), x)

    return x0


def _b_coefficients(hh: Tensor, rks: Tensor, order: int, bh2: bool) -> tuple[Tensor, Tensor, Tensor]:
    """UniPC's system R·ρ = b: R[k] = r^k, b[k] = k!·φ_{k+1}(hh)/B(h) (φ by the recurrence φ_{k+1} = (φ_k - 1/k!)/hh)."""
    h_phi_1 = torch.expm1(hh)
    b_h = torch.expm1(hh) if bh2 else hh
    phi, factorial = h_phi_1 / hh - 1, 1
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append(torch.pow(rks, k - 1))
        b.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1 / factorial
    return torch.stack(rows), torch.tensor(b), b_h


def _update(
    x0_fn: DataFn,
    x: Tensor,
    estimates: list[Tensor],
    times: list[Tensor],
    t: Tensor,
    order: int,
    *,
    corrector: bool,
    bh2: bool,
) -> tuple[Tensor, Tensor | None]:
    """One UniPC step from times[-1] to t: the predictor, and the corrector with x0 at the prediction.

    Returns the new state and the x0 evaluated there (None without the corrector).
    """
    lambda_0, lambda_t = _lambda(times[-1]), _lambda(t)
    m0 = estimates[-1]
    h = lambda_t - lambda_0
    rks_list: list[Tensor | float] = []
    d1s = []
    for k in range(1, order):
        rk = ((_lambda(times[-(k + 1)]) - lambda_0) / h)[0]
        rks_list.append(rk)
        d1s.append((estimates[-(k + 1)] - m0) / rk)
    rks_list.append(1.0)
    hh = -h[0]
    rows, b, b_h = _b_coefficients(hh, torch.tensor(rks_list), order, bh2)
    alpha_t = torch.exp(_log_alpha(t))
    base = _per_sample(_std(t) / _std(times[-1]), x) * x - _per_sample(alpha_t * torch.expm1(hh), x) * m0
    weight = _per_sample(alpha_t * b_h, x)
    stacked = torch.stack(d1s, dim=1) if d1s else None
    if stacked is not None:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(rows[:-1, :-1], b[:-1])
        x_t = base - weight * torch.tensordot(stacked, rhos_p, dims=([1], [0]))
    else:
        x_t = base - weight * 0
    if not corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(rows, b)
    model_t = x0_fn(x_t, t)
    corr: Tensor | int = 0 if stacked is None else torch.tensordot(stacked, rhos_c[:-1], dims=([1], [0]))
    return base - weight * (corr + rhos_c[-1] * (model_t - m0)), model_t


def unipc(model: Denoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None, *, bh2: bool) -> Tensor:
    """Multistep UniPC, order min(3, steps - 1), lower orders for the first and last steps."""
    sigmas = prepare_sigmas(x, sigmas)
    times = sigmas.clone()
    end_at_zero = bool(times[-1] == 0)
    if end_at_zero:
        times[-1] = 0.001
    steps = len(times) - 1
    order = min(3, steps - 1)
    x0_fn = _data_prediction(model)
    batch = x.shape[0]
    x = x / torch.sqrt(1.0 + times[0] ** 2.0)
    estimates: list[Tensor] = []
    t_list: list[Tensor] = []
    for step_index in range(steps):
        if step_index == 0:
            t_list, estimates = [times[0].expand(batch)], [x0_fn(x, times[0].expand(batch))]
        elif step_index < order:
            t = times[step_index].expand(batch)
            x, model_x = _update(x0_fn, x, estimates, t_list, t, step_index, corrector=True, bh2=bh2)
            estimates, t_list = [*estimates, model_x if model_x is not None else x0_fn(x, t)], [*t_list, t]
        else:
            for step in range(step_index, step_index + 1 + (step_index == steps - 1)):
                t = times[step].expand(batch)
                step_order = min(order, steps + 1 - step)
                x, model_x = _update(
                    x0_fn, x, estimates, t_list, t, step_order, corrector=step != steps, bh2=bh2
                )
                t_list = [*t_list[1:order], t]  # a window of `order` points
                if step == steps:  # after the last step the window only shifts: its last x0 stays
                    model_x = estimates[-1]
                elif model_x is None:
                    model_x = x0_fn(x, t)
                estimates = [*estimates[1:order], model_x]
        if callback is not None:
            callback(step_index, steps, x, estimates[-1])
    x = x / _alpha(times[-1])
    return x / (1.0 - times[-1]) if end_at_zero else x


@torch.no_grad()
def sample_uni_pc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """UniPC with B(h) = h (ComfyUI `uni_pc`)."""
    return unipc(model, x, sigmas, callback, bh2=False)


@torch.no_grad()
def sample_uni_pc_bh2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """UniPC with B(h) = e^h - 1 (ComfyUI `uni_pc_bh2`)."""
    return unipc(model, x, sigmas, callback, bh2=True)
