"""DPM-Solver (fast, adaptive) and UniPC against float64 transcriptions (see formulas.py), their
callbacks, and KSampler's discarded penultimate sigma. ComfyUI parity: see
test_sampling_formulas_ode.py's docstring (all bit-identical).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from formulas import SHAPE, Toy, at, close, half, wobbly

from zturbo.sampling import DISCARD_PENULTIMATE_SIGMA, SAMPLERS, get_sigmas, sample, seeded_noise

SCHEDULES = [("simple", 8), ("karras", 7), ("normal", 4), ("simple", 3), ("simple", 2), ("simple", 1)]


def x_start() -> torch.Tensor:
    return seeded_noise(SHAPE, 13)


def eps(model: Toy, x: torch.Tensor, t: float) -> torch.Tensor:
    sigma = math.exp(-t)
    return (x - at(model, x, sigma)) / sigma


def dpm_step(
    model: Toy, x: torch.Tensor, t: float, t1: float, order: int, r1: float | None = None
) -> torch.Tensor:
    """DPM-Solver-1/2/3 in the noise form, t = -log σ (Lu et al. 2022, Algorithms 1 and 2)."""
    h, e = t1 - t, eps(model, x, t)
    sig = lambda v: math.exp(-v)  # noqa: E731
    base = x - sig(t1) * math.expm1(h) * e
    if order == 1:
        return base
    if order == 2:
        r = 0.5 if r1 is None else r1
        e1 = eps(model, x - sig(t + r * h) * math.expm1(r * h) * e, t + r * h)
        return base - sig(t1) / (2 * r) * math.expm1(h) * (e1 - e)
    s1, s2 = t + h / 3, t + 2 * h / 3
    e1 = eps(model, x - sig(s1) * math.expm1(h / 3) * e, s1)
    u2 = (
        x
        - sig(s2) * math.expm1(2 * h / 3) * e
        - sig(s2) * 2 * (math.expm1(2 * h / 3) / (2 * h / 3) - 1) * (e1 - e)
    )
    return base - sig(t1) / (2 / 3) * (math.expm1(h) / h - 1) * (eps(model, u2, s2) - e)


def span(sigmas: list[float]) -> tuple[float, float]:
    last = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    return -math.log(sigmas[0]), -math.log(last)


def ref_dpm_fast(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    nfe = len(sigmas) - 1
    m = nfe // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    ts = np.linspace(*span(sigmas), m + 1)
    for i, order in enumerate(orders):
        x = dpm_step(model, x, ts[i], ts[i + 1], order)
    return x


def ref_dpm_adaptive(model: Toy, x: torch.Tensor, sigmas: list[float]) -> tuple[torch.Tensor, int]:
    """DPM-Solver-23 with the integral step-size controller (factor (1/err)^(1/3), limiter 1 + atan(f - 1))."""
    s, t_end = span(sigmas)
    h, x_prev, tries = 0.05, x, 0
    while s < t_end - 1e-5:
        t = min(t_end, s + h)
        x_low = dpm_step(model, x, s, t, 2, r1=1 / 3)
        x_high = dpm_step(model, x, s, t, 3)
        delta = torch.clamp(0.05 * torch.maximum(x_low.abs(), x_prev.abs()), min=0.0078)
        error = float(torch.linalg.norm((x_low - x_high) / delta)) / math.sqrt(x.numel())
        factor = 1 + math.atan((1 / (error + 1e-8)) ** (1 / 3) - 1)
        if factor >= 0.81:
            x_prev, x, s = x_low, x_high, t
        h *= factor
        tries += 1
    return x, tries


def ref_uni_pc(model: Toy, x: torch.Tensor, sigmas: list[float], bh2: bool) -> torch.Tensor:
    """UniPC-p (data prediction) on the VP view α = 1/sqrt(1+σ²), σ_vp = σα, so λ = -log σ and
    x0(x_vp) = D(x_vp·sqrt(1+σ²)). Order min(3, N-1); lower orders at the start and the end."""
    ts = [*sigmas[:-1], 0.001] if sigmas[-1] == 0 else list(sigmas)
    n = len(ts) - 1
    order = min(3, n - 1)
    alpha = lambda s: 1 / math.sqrt(1 + s * s)  # noqa: E731
    std = lambda s: s * alpha(s)  # noqa: E731
    lam_vp = lambda s: -math.log(s)  # noqa: E731
    x0 = lambda y, s: at(model, y / alpha(s), s)  # noqa: E731

    def update(y, hist_t, hist_m, t, k, corrector):
        lam0 = lam_vp(hist_t[-1])
        h = lam_vp(t) - lam0
        rks = [(lam_vp(hist_t[-1 - j]) - lam0) / h for j in range(1, k)] + [1.0]
        d1s = [(hist_m[-1 - j] - hist_m[-1]) / rks[j - 1] for j in range(1, k)]
        hh = -h
        big_b = math.expm1(hh) if bh2 else hh
        g, fact, b = math.expm1(hh) / hh - 1, 1, []
        for i in range(1, k + 1):
            b.append(g * fact / big_b)
            fact *= i + 1
            g = g / hh - 1 / fact
        rmat = np.array([[r ** (i - 1) for r in rks] for i in range(1, k + 1)])
        base = std(t) / std(hist_t[-1]) * y - alpha(t) * math.expm1(hh) * hist_m[-1]
        w = alpha(t) * big_b
        pred = y * 0
        if d1s:
            rho = [0.5] if k == 2 else np.linalg.solve(rmat[:-1, :-1], b[:-1])
            pred = sum(r * d for r, d in zip(rho, d1s, strict=True))
        y_t = base - w * pred
        if not corrector:
            return y_t, None
        rho_c = [0.5] if k == 1 else np.linalg.solve(rmat, b)
        m_t = x0(y_t, t)
        corr = sum(r * d for r, d in zip(rho_c[:-1], d1s, strict=True)) if d1s else 0
        return base - w * (corr + rho_c[-1] * (m_t - hist_m[-1])), m_t

    y = x * alpha(ts[0])
    hist_t, hist_m = [ts[0]], [x0(y, ts[0])]
    for step in range(1, n + 1 if order > 0 else 1):  # one step: order 0, no update (ComfyUI's too)
        k = step if step < order else min(order, n + 1 - step)
        y, m = update(y, hist_t, hist_m, ts[step], k, corrector=step < n)
        hist_t, hist_m = (
            (hist_t + [ts[step]])[-max(order, 1) :],
            (hist_m + [m if m is not None else hist_m[-1]]),
        )
        hist_m = hist_m[-max(order, 1) :]
    y = y / alpha(ts[-1])
    return y / (1 - 0.001) if sigmas[-1] == 0 else y


@pytest.mark.parametrize("toy", [half, wobbly])
@pytest.mark.parametrize(("scheduler", "steps"), SCHEDULES)
def test_dpm_fast_matches_its_formula(toy: Toy, scheduler: str, steps: int) -> None:
    sigmas = get_sigmas(scheduler, steps)
    close(
        SAMPLERS["dpm_fast"](toy, x_start(), sigmas), ref_dpm_fast(toy, x_start().double(), sigmas.tolist())
    )


@pytest.mark.parametrize(("scheduler", "steps"), SCHEDULES[:3])
def test_dpm_adaptive_matches_its_formula_and_controller(scheduler: str, steps: int) -> None:
    sigmas = get_sigmas(scheduler, steps)
    calls: list[int] = []
    got = SAMPLERS["dpm_adaptive"](wobbly, x_start(), sigmas, callback=lambda i, total, x, d: calls.append(i))
    want, tries = ref_dpm_adaptive(wobbly, x_start().double(), sigmas.tolist())
    close(got, want)
    assert len(calls) == tries
    assert calls == [min(i, steps - 1) for i in range(tries)]  # clamped to the schedule's steps


# The sampler (like ComfyUI's) forms σ_vp = sqrt(1 - α²) in float32: at σ = 0.001, 1 - α² ≈ 1e-6
# keeps ~5% relative precision, and the last step's x coefficient σ_vp'/σ_vp (~0.003) carries it:
# ~1e-4 of |x| there. The float64 reference uses σ_vp = σα exactly.
UNI_PC_TOL = 1e-3


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
@pytest.mark.parametrize("toy", [half, wobbly])
@pytest.mark.parametrize(("scheduler", "steps"), SCHEDULES)
def test_uni_pc_matches_its_formula(name: str, toy: Toy, scheduler: str, steps: int) -> None:
    sigmas = get_sigmas(scheduler, steps, discard_penultimate=True)
    want = ref_uni_pc(toy, x_start().double(), sigmas.tolist(), bh2=name == "uni_pc_bh2")
    close(SAMPLERS[name](toy, x_start(), sigmas), want, tol=UNI_PC_TOL)


def test_uni_pc_ending_above_zero_keeps_its_last_sigma() -> None:
    sigmas = get_sigmas("simple", 8)[:-3]  # stops at 0.5, as KSamplerAdvanced with leftover noise
    want = ref_uni_pc(wobbly, x_start().double(), sigmas.tolist(), False)
    close(SAMPLERS["uni_pc"](wobbly, x_start(), sigmas), want)


def test_dpm_fast_calls_back_once_per_solver_step() -> None:
    calls: list[tuple[int, int]] = []
    SAMPLERS["dpm_fast"](
        wobbly, x_start(), get_sigmas("simple", 8), callback=lambda i, n, x, d: calls.append((i, n))
    )
    assert calls == [(0, 8), (1, 8), (2, 8)]  # 8 model calls as orders 3, 3, 2


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
def test_uni_pc_calls_back_once_per_step(name: str) -> None:
    calls: list[tuple[int, int]] = []
    SAMPLERS[name](
        wobbly, x_start(), get_sigmas("simple", 5), callback=lambda i, n, x, d: calls.append((i, n))
    )
    assert calls == [(i, 5) for i in range(5)]


@pytest.mark.parametrize("name", sorted(DISCARD_PENULTIMATE_SIGMA))
def test_ksampler_drops_the_penultimate_sigma_for_these(name: str) -> None:
    """ComfyUI's KSampler schedules steps + 1 and drops the one before the final 0 (before a denoise cut)."""
    longer = get_sigmas("simple", 9)
    assert torch.equal(
        get_sigmas("simple", 8, discard_penultimate=True), torch.cat([longer[:-2], longer[-1:]])
    )
    cut = get_sigmas("simple", 4, denoise=0.5, discard_penultimate=True)
    assert torch.equal(cut, torch.cat([longer[:-2], longer[-1:]])[-5:])


def test_sample_divides_by_one_after_uni_pc() -> None:
    """uni_pc returns ComfyUI's result including its 1/(1 - 0.001); `sample` then divides by 1 - 0 = 1."""
    sigmas = get_sigmas("simple", 4, discard_penultimate=True)
    noise = x_start()
    direct = SAMPLERS["uni_pc"](wobbly, noise, sigmas)
    assert torch.equal(sample("uni_pc", wobbly, noise, torch.zeros_like(noise), sigmas, seed=0), direct)


def test_uni_pc_with_one_step_only_rescales_the_start() -> None:
    """ComfyUI's UniPC takes no step when the schedule has one (order min(3, 0)): x/sqrt(2)/α(0.001)/0.999."""
    x = x_start()
    got = SAMPLERS["uni_pc"](wobbly, x, torch.tensor([1.0, 0.0]))
    close(got, x.double() / math.sqrt(2) * math.sqrt(1 + 1e-6) / (1 - 0.001))
