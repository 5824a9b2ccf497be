"""Ancestral and SDE samplers against float64 transcriptions of their formulas (see formulas.py).

The noise is an input of the formulas: the default sampler's draws are reproduced here from a CPU
generator seeded with seed + 1 (`CpuNoise`); the Brownian-tree samplers get the package's tree
(`BrownianTreeNoiseSampler`, tested against torchsde in test_sampling_noise.py). ComfyUI parity: see
test_sampling_formulas_ode.py's docstring (all bit-identical).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from formulas import (
    SHAPE,
    CpuNoise,
    Guided,
    Toy,
    ancestral,
    at,
    close,
    lam,
    offset_first,
    rf_ancestral,
    sigma_of,
    wobbly,
)
from scipy import integrate

from zturbo.sampling import SAMPLERS, get_sigmas, seeded_noise
from zturbo.sampling.noise import BrownianTreeNoiseSampler

SEED = 9
SCHEDULES = [("simple", 6, 1.0), ("karras", 5, 0.85), ("beta", 4, 1.0)]


def x_start() -> torch.Tensor:
    return seeded_noise(SHAPE, 12)


def brownian(sigmas: list[float]):
    tree = BrownianTreeNoiseSampler(
        x_start(), torch.tensor(min(s for s in sigmas if s > 0)), torch.tensor(max(sigmas)), SEED
    )
    return lambda a, b: tree(
        torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    ).double()


def ref_dpm_2_ancestral(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    noise = CpuNoise(SEED)
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - at(model, x, s)) / s
        down, rescale, renoise = rf_ancestral(s, s1)
        if s1 == 0:
            x = x - d * s
            continue
        mid = math.sqrt(s * down)
        x_2 = x + d * (mid - s)
        x = x + (x_2 - at(model, x_2, mid)) / mid * (down - s)
        x = rescale * x + noise() * renoise
    return x


def ref_dpmpp_2s_ancestral(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    noise = CpuNoise(SEED)
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        if s1 == 0:
            x = denoised
            continue
        down, rescale, renoise = rf_ancestral(s, s1)
        sigma_s = 0.9999 if s == 1.0 else sigma_of((lam(s) + lam(down)) / 2)
        u = sigma_s / s * x + (1 - sigma_s / s) * denoised
        x = down / s * x + (1 - down / s) * at(model, u, sigma_s)
        x = rescale * x + noise() * renoise
    return x


def ref_euler_ancestral_cfg_pp(model: Guided, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """x' = α'D + α'σ_d·(x - αD_u)/σ + α'σ_u·ξ, the ancestral split taken on σ/α (α = 1 - σ)."""
    noise = CpuNoise(SEED)
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        if s1 == 0:
            x = denoised
            continue
        a, a1 = 1 - s, 1 - s1
        d = (x - a * model.uncond_denoised) / s  # type: ignore[operator]
        down, up = (0.0, s1 / a1) if a == 0 else ancestral(s / a, s1 / a1)  # σ/α = ∞ at σ = 1
        x = a1 * denoised + a1 * down * d + a1 * noise() * up
    return x


def ref_dpmpp_2s_ancestral_cfg_pp(model: Guided, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """In t = -log σ; the full step's D - D_u uses the midpoint call's D_u (ComfyUI's order)."""
    noise = CpuNoise(SEED)
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        uncond = model.uncond_denoised
        down, up = ancestral(s, s1)
        if down == 0:
            x = denoised
        else:
            h = math.log(s / down)
            mid = math.sqrt(s * down)
            x_2 = mid / s * (x + (denoised - uncond)) - math.expm1(-h / 2) * denoised  # type: ignore[operator]
            denoised_2 = at(model, x_2, mid)
            x = down / s * (x + (denoised - model.uncond_denoised)) - math.expm1(-h) * denoised_2  # type: ignore[operator]
        if s1 > 0:
            x = x + noise() * up
    return x


def ref_res_multistep_ancestral(
    model: Toy, x: torch.Tensor, sigmas: list[float], cfg_pp: bool
) -> torch.Tensor:
    noise = CpuNoise(SEED)
    old = old_down = None
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        denoised = at(model, x, s)
        uncond = model.uncond_denoised if cfg_pp else denoised  # type: ignore[attr-defined]
        down, up = ancestral(s, s1)
        if down == 0 or old is None:
            x = denoised + (x - uncond) / s * down if cfg_pp else x + (x - denoised) / s * (down - s)
        else:
            h = math.log(s / down)
            c2 = math.log(old_down / sigmas[i - 1]) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            if cfg_pp:
                x = x + (denoised - uncond)
            x = math.exp(-h) * x + h * ((phi1 - phi2 / c2) * uncond + phi2 / c2 * old)
        if s1 > 0:
            x = x + noise() * up
        old, old_down = uncond, down
    return x


def ref_dpmpp_2m_sde_heun(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    noise = brownian(sigmas)
    sigmas = offset_first(sigmas)
    old = h_last = None
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        if s1 == 0:
            x = denoised
        else:
            h = lam(s1) - lam(s)
            x = s1 / s * math.exp(-h) * x - (1 - s1) * math.expm1(-2 * h) * denoised
            if old is not None:
                x = x + (1 - s1) * (math.expm1(-2 * h) / (2 * h) + 1) * (h / h_last) * (denoised - old)
            x = x + noise(s, s1) * s1 * math.sqrt(-math.expm1(-2 * h))
            h_last = h
        old = denoised
    return x


def ref_dpmpp_3m_sde(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    noise = brownian(sigmas)
    sigmas = offset_first(sigmas)
    ds: list[torch.Tensor] = []
    hs: list[float] = []
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        if s1 == 0:
            x = denoised
            continue
        h = lam(s1) - lam(s)
        a1 = 1 - s1
        x = s1 / s * math.exp(-h) * x - a1 * math.expm1(-2 * h) * denoised
        phi_2 = math.expm1(-2 * h) / (2 * h) + 1
        phi_3 = phi_2 / (2 * h) - 0.5
        if len(ds) >= 2:
            r0, r1 = hs[-1] / h, hs[-2] / h
            d1_0, d1_1 = (denoised - ds[-1]) / r0, (ds[-1] - ds[-2]) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + a1 * phi_2 * d1 - a1 * phi_3 * d2
        elif ds:
            x = x + a1 * phi_2 * (denoised - ds[-1]) * h / hs[-1]
        x = x + noise(s, s1) * s1 * math.sqrt(-math.expm1(-2 * h))
        ds.append(denoised)
        hs.append(h)
    return x


def ref_ddpm(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    noise = CpuNoise(SEED)
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        eps = (x - at(model, x, s)) / s
        abar, abar1 = 1 / (1 + s * s), 1 / (1 + s1 * s1)
        alpha = abar / abar1
        x = (x / math.sqrt(1 + s * s) - (1 - alpha) * eps / math.sqrt(1 - abar)) / math.sqrt(alpha)
        if s1 > 0:
            x = (x + math.sqrt((1 - alpha) * (1 - abar1) / (1 - abar)) * noise()) * math.sqrt(1 + s1 * s1)
    return x


def ref_lcm(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    noise = CpuNoise(SEED)
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = at(model, x, s)
        if s1 > 0:
            x = s1 * noise() + (1 - s1) * x
    return x


def ref_seeds(model: Toy, x: torch.Tensor, sigmas: list[float], rs: list[float], solver: str) -> torch.Tensor:
    """SEEDS with eta 1 (h_η = 2h): stages at λ + r_k·h, noise carried between stages."""
    noise = CpuNoise(SEED)
    sigmas = offset_first(sigmas)
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        if s1 == 0:
            x = denoised
            continue
        h = lam(s1) - lam(s)
        phi1 = lambda z: math.expm1(z)  # noqa: E731  (h·φ1)
        phi2 = lambda z: (math.expm1(z) - z) / z  # noqa: E731  (h·φ2)
        points = [s] + [sigma_of(lam(s) + r * h) for r in rs]
        estimates = [denoised]
        carried = None
        for k, r in enumerate([*rs, 1.0]):
            sig = points[k + 1] if k < len(rs) else s1
            a = 1 - sig
            if k == 0:
                mix = phi1(-2 * r * h) * denoised
            elif k < len(rs):  # SEEDS-3's second stage
                a2 = rs[1] / rs[0] * phi2(-2 * rs[1] * h)
                mix = (phi1(-2 * rs[1] * h) - a2) * denoised + a2 * estimates[1]
            elif solver == "phi_1":
                mix = phi1(-2 * h) * (denoised + (estimates[1] - denoised) / (2 * rs[0]))
            else:
                b = phi2(-2 * h) / rs[-1]
                mix = (phi1(-2 * h) - b) * denoised + b * estimates[-1]
            y = sig / s * math.exp(-r * h) * x - a * mix
            r_prev = rs[k - 1] if k > 0 else 0.0
            if carried is None:
                carried = math.sqrt(-math.expm1(-2 * r * h)) * noise()
            else:
                seg = (r_prev - r) * h
                carried = carried * math.exp(seg) + math.sqrt(-math.expm1(2 * seg)) * noise()
            y = y + carried * sig
            if k < len(rs):
                estimates.append(at(model, y, sig))
            else:
                x = y
    return x


def adams_weights(nodes: list[float], lam_s: float, lam_t: float, tau: float, sigma_t: float) -> list[float]:
    """b_k = α_t(1+τ²)∫ e^((1+τ²)(u-λ_t))·ℓ_k(u) du over [λ_s, λ_t], by adaptive quadrature."""
    m = 1 + tau * tau
    out = []
    for j in range(len(nodes)):
        others = [v for k, v in enumerate(nodes) if k != j]

        def f(u: float, j: int = j, others: list[float] = others) -> float:
            return math.exp(m * (u - lam_t)) * float(np.prod([(u - v) / (nodes[j] - v) for v in others]))

        out.append(sigma_t * math.exp(lam_t) * m * integrate.quad(f, lam_s, lam_t, epsabs=0, epsrel=1e-12)[0])
    return out


def ref_sa_solver(model: Toy, x: torch.Tensor, sigmas: list[float], pece: bool) -> torch.Tensor:
    noise = CpuNoise(SEED)
    sigmas = offset_first(sigmas)
    lams = [lam(s) if s > 0 else math.inf for s in sigmas]
    start, end = (3 * t / (1 + 2 * t) for t in (0.8, 0.2))  # percent_to_sigma(0.2), (0.8) at shift 3
    n = len(sigmas)
    x_pred, tau, h, step_noise = x, 0.0, 0.0, None
    ests: list[torch.Tensor] = []
    for i in range(n - 1):
        denoised = at(model, x_pred, sigmas[i])
        ests = [*ests, denoised][-4:]
        p = min(3, len(ests), n - 2 - i)
        c = 0 if i == 0 or (sigmas[i + 1] == 0 and not pece) else min(4, len(ests), n - 1 - i)
        if c == 0:
            x = x_pred
        else:
            b = adams_weights(lams[i - c + 1 : i + 1], lams[i - 1], lams[i], tau, sigmas[i])
            x = sigmas[i] / sigmas[i - 1] * math.exp(-tau * tau * h) * x + sum(
                w * e for w, e in zip(b, ests[-c:], strict=True)
            )
            if tau > 0 and step_noise is not None:
                x = x + step_noise
            if pece:
                ests[-1] = denoised = at(model, x, sigmas[i])
        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau = 1.0 if start >= sigmas[i + 1] >= end else 0.0
        b = adams_weights(lams[i - p + 1 : i + 1], lams[i], lams[i + 1], tau, sigmas[i + 1])
        h = lams[i + 1] - lams[i]
        x_pred = sigmas[i + 1] / sigmas[i] * math.exp(-tau * tau * h) * x + sum(
            w * e for w, e in zip(b, ests[-p:], strict=True)
        )
        if tau > 0:
            step_noise = noise() * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * tau * tau * h))
            x_pred = x_pred + step_noise
    return x_pred


PLAIN = {
    "dpm_2_ancestral": ref_dpm_2_ancestral,
    "dpmpp_2s_ancestral": ref_dpmpp_2s_ancestral,
    "res_multistep_ancestral": lambda m, x, s: ref_res_multistep_ancestral(m, x, s, cfg_pp=False),
    "dpmpp_2m_sde_heun": ref_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": ref_dpmpp_3m_sde,
    "ddpm": ref_ddpm,
    "lcm": ref_lcm,
    "seeds_2": lambda m, x, s: ref_seeds(m, x, s, [0.5], "phi_1"),
    "seeds_3": lambda m, x, s: ref_seeds(m, x, s, [1 / 3, 2 / 3], "phi_2"),
    "exp_heun_2_x0_sde": lambda m, x, s: ref_seeds(m, x, s, [1.0], "phi_2"),
    "sa_solver": lambda m, x, s: ref_sa_solver(m, x, s, pece=False),
    "sa_solver_pece": lambda m, x, s: ref_sa_solver(m, x, s, pece=True),
}
GUIDED = {
    "euler_ancestral_cfg_pp": ref_euler_ancestral_cfg_pp,
    "dpmpp_2s_ancestral_cfg_pp": ref_dpmpp_2s_ancestral_cfg_pp,
    "res_multistep_ancestral_cfg_pp": lambda m, x, s: ref_res_multistep_ancestral(m, x, s, cfg_pp=True),
}
# SA-Solver: float32 Vandermonde solves. DDPM: 1 - ᾱ = σ²/(1+σ²) is formed in float32 (as ComfyUI
# does), so at σ ≈ 0.003 it keeps only ~1e-2 of its relative precision: ~1e-4 absolute in x.
TOLERANCE = {"sa_solver": 1e-4, "sa_solver_pece": 1e-4, "ddpm": 1e-3}


@pytest.mark.parametrize("name", sorted(PLAIN))
@pytest.mark.parametrize(("scheduler", "steps", "denoise"), SCHEDULES)
def test_stochastic_sampler_matches_its_formula(
    name: str, scheduler: str, steps: int, denoise: float
) -> None:
    if name.startswith("dpmpp_"):
        pytest.importorskip("torchsde")
    sigmas = get_sigmas(scheduler, steps, denoise=denoise)
    got = SAMPLERS[name](wobbly, x_start(), sigmas, seed=SEED)
    close(got, PLAIN[name](wobbly, x_start().double(), sigmas.tolist()), TOLERANCE.get(name, 1e-5))


@pytest.mark.parametrize("name", sorted(GUIDED))
@pytest.mark.parametrize(("scheduler", "steps", "denoise"), SCHEDULES)
def test_stochastic_cfg_pp_sampler_matches_its_formula(
    name: str, scheduler: str, steps: int, denoise: float
) -> None:
    sigmas = get_sigmas(scheduler, steps, denoise=denoise)
    got = SAMPLERS[name](Guided(), x_start(), sigmas, seed=SEED)
    close(got, GUIDED[name](Guided(), x_start().double(), sigmas.tolist()))


def test_dpmpp_2s_ancestral_cfg_pp_takes_the_midpoints_uncond_for_the_full_step() -> None:
    """Two calls per step; the full step shifts x by D - D_u of the midpoint call, as ComfyUI does."""
    model = Guided()
    SAMPLERS["dpmpp_2s_ancestral_cfg_pp"](model, x_start(), get_sigmas("simple", 3), seed=SEED)
    assert len(model.calls) == 2 * 2 + 1
