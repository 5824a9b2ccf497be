"""Deterministic samplers against float64 transcriptions of their formulas (see formulas.py).

Checked against ComfyUI's own code (upstream commit fe2511468d6b, 2026-02-03, after v0.12.1; its
k_diffusion/sampling.py, deis.py, sa_solver.py, extra_samplers/uni_pc.py, run on CPU with a shim for the
model wrapper, outside this repository): every sampler's output on the same toy denoisers, sigmas (5
schedules, cfg 1 and > 1, img2img) and seeds had max abs diff 0 (bit-identical), except deis at
1.2e-6 (its kernel's derivative is closed-form here, autograd there). Schedulers: 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from formulas import SHAPE, Guided, Toy, at, close, half, lam, offset_first, sigma_of, wobbly
from numpy.polynomial import polynomial as P
from scipy import integrate

from zturbo.sampling import SAMPLERS, get_sigmas, seeded_noise
from zturbo.sampling.multistep import ipndm_v_weights

SCHEDULES = [("simple", 8), ("karras", 7), ("beta", 5), ("simple", 2)]


def x_start() -> torch.Tensor:
    return seeded_noise(SHAPE, 11)


def run(name: str, model: Toy, sigmas: torch.Tensor) -> torch.Tensor:
    return SAMPLERS[name](model, x_start(), sigmas, seed=5)


def ref_dpm_2(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - at(model, x, s)) / s
        if s1 == 0:
            x = x + d * (s1 - s)
            continue
        mid = math.sqrt(s * s1)
        x_2 = x + d * (mid - s)
        x = x + (x_2 - at(model, x_2, mid)) / mid * (s1 - s)
    return x


def ref_heunpp2(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    n, end = len(sigmas) - 1, sigmas[-1]
    slope = lambda y, s: (y - at(model, y, s)) / s  # noqa: E731
    for i in range(n):
        s, s1 = sigmas[i], sigmas[i + 1]
        d, dt = slope(x, s), s1 - s
        if s1 == end:
            x = x + d * dt
        elif sigmas[i + 2] == end:
            x_2 = x + d * dt
            w2 = s1 / (2 * sigmas[0])
            x = x + ((1 - w2) * d + w2 * slope(x_2, s1)) * dt
        else:
            x_2 = x + d * dt
            d_2 = slope(x_2, s1)
            x_3 = x_2 + d_2 * (sigmas[i + 2] - s1)
            w2, w3 = s1 / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * slope(x_3, sigmas[i + 2])) * dt
    return x


def lagrange_integral(nodes: list[float], j: int, a: float, b: float) -> float:
    """Exact ∫_a^b of the Lagrange basis polynomial of nodes[j] (NumPy polynomial algebra)."""
    others = [v for k, v in enumerate(nodes) if k != j]
    coeffs = P.polyfromroots(others) / np.prod([nodes[j] - v for v in others])
    antiderivative = P.polyint(coeffs)
    return float(P.polyval(b, antiderivative) - P.polyval(a, antiderivative))


def ref_lms(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        denoised = at(model, x, s)
        ds.append((x - denoised) / s)
        if s1 == 0:
            x = denoised
            continue
        order = min(i + 1, 4)
        nodes = [sigmas[i - k] for k in range(order)]
        x = x + sum(lagrange_integral(nodes, j, s, s1) * ds[-1 - j] for j in range(order))
    return x


def ref_gradient_estimation(model: Toy, x: torch.Tensor, sigmas: list[float], cfg_pp: bool) -> torch.Tensor:
    old_d = None
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        uncond = model.uncond_denoised if cfg_pp else denoised  # type: ignore[attr-defined]
        d = (x - uncond) / s
        if s1 == 0:
            x = denoised
        else:
            x = denoised + d * s1 if cfg_pp else x + d * (s1 - s)
            if old_d is not None:
                x = x + (d - old_d) * (s1 - s)  # (γ - 1)·Δd·dt with γ = 2
        old_d = d
    return x


IPNDM = [[1.0], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]


def ref_ipndm(model: Toy, x: torch.Tensor, sigmas: list[float], weights_fn=None) -> torch.Tensor:
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        denoised = at(model, x, s)
        ds.append((x - denoised) / s)
        order = min(4, i + 1)
        if s1 == 0:
            x = denoised
            continue
        w = IPNDM[order - 1] if weights_fn is None else weights_fn(sigmas, i, order)
        x = x + (s1 - s) * sum(w[j] * ds[-1 - j] for j in range(order))
    return x


def ipndm_v_ref_weights(sigmas: list[float], i: int, order: int) -> list[float]:
    """diff-solvers' variable-step iPNDM weights, written out from its formulas (h_k = σ_k+1 - σ_k)."""
    if order == 1:
        return [1.0]
    h = [sigmas[i + 1 - k] - sigmas[i - k] for k in range(order)]  # h_n, h_{n-1}, …
    r = h[0] / h[1]
    w = [1 + r / 2, -r / 2]
    if order == 2:
        return w
    t1 = (1 - h[0] / (3 * (h[0] + h[1])) * h[0] * (h[0] + h[1]) / (h[1] * (h[1] + h[2]))) / 2
    a = h[1] / h[2]
    if order == 3:
        return [w[0] + t1, w[1] - (1 + a) * t1, t1 * a]
    q = h[1] * (h[1] + h[2]) / (h[2] * (h[2] + h[3]))
    s01, s012 = h[0] + h[1], h[0] + h[1] + h[2]
    t2 = ((1 - h[0] / (3 * s01)) / 2 + (1 - h[0] / (2 * s01)) * h[0] / (6 * s012)) * (h[0] * s01 * s012)
    t2 /= h[1] * (h[1] + h[2]) * (h[1] + h[2] + h[3])
    return [w[0] + t1 + t2, w[1] - (1 + a) * t1 - (1 + a + q) * t2, t1 * a + (a + q * (1 + h[2] / h[3])) * t2,
            -t2 * q * a]  # fmt: skip


def deis_ref_weights(times: list[float], i: int, order: int, b0: float, b1: float) -> list[float]:
    """tAB-DEIS weights by adaptive quadrature of kernel × Lagrange basis (the sampler: a 10⁴-point sum)."""

    def kernel(tau: float) -> float:
        alpha = math.exp(-0.5 * tau * tau * (b1 - b0) - tau * b0)
        return -0.5 * (-tau * (b1 - b0) - b0) / math.sqrt(alpha * (1 - alpha))

    nodes = [times[i - k] for k in range(order)]
    out = []
    for j in range(order):
        others = [v for k, v in enumerate(nodes) if k != j]
        basis = lambda tau: np.prod([(tau - v) / (nodes[j] - v) for v in others])  # noqa: B023, E731
        integrand = lambda tau: kernel(tau) * basis(tau)  # noqa: B023, E731
        out.append(integrate.quad(integrand, times[i], times[i + 1], epsabs=0, epsrel=1e-12)[0])
    return out


def deis_times(sigmas: list[float]) -> tuple[list[float], float, float]:
    """The VP times of the EDM-fitted linear-β schedule (σ ∈ [0.002, 80] on t ∈ [1e-3, 1])."""
    lmin, lmax = math.log(0.002**2 + 1), math.log(80.0**2 + 1)
    beta_d = 2 * (lmin / 1e-3 - lmax) / (1e-3 - 1)
    beta_0 = lmax - 0.5 * beta_d
    times = [(math.sqrt(beta_0**2 + 2 * beta_d * math.log(s * s + 1)) - beta_0) / beta_d for s in sigmas]
    return times, beta_0, beta_0 + beta_d


def ref_deis(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    times, b0, b1 = deis_times(sigmas)
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        ds.append((x - at(model, x, s)) / s)
        order = 1 if s1 <= 0 else min(3, i + 1)
        if order == 1:
            x = x + (s1 - s) * ds[-1]
        else:
            w = deis_ref_weights(times, i, order, b0, b1)
            x = x + sum(w[j] * ds[-1 - j] for j in range(order))
    return x


def ref_exp_heun_2_x0(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Exponential Heun in λ: x' = (σ'/σ)x - α'(b1·D + b2·D'), b2 = hφ2(-h), b1 = hφ1(-h) - b2."""
    sigmas = offset_first(sigmas)
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        if s1 == 0:
            x = denoised
            continue
        h = lam(s1) - lam(s)
        s_1 = sigma_of(lam(s1))  # the stage at r = 1 lands on σ' (through λ and back)
        x_2 = s_1 / s * x - (1 - s_1) * math.expm1(-h) * denoised
        b2 = (math.expm1(-h) + h) / -h
        b1 = math.expm1(-h) - b2
        x = s1 / s * x - (1 - s1) * (b1 * denoised + b2 * at(model, x_2, s_1))
    return x


def ref_euler_cfg_pp(model: Guided, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """CFG++ Euler: x' = D + σ'·(x - D_u)/σ (for flow models α = 1 - σ cancels: DDIM in x/α)."""
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = at(model, x, s)
        if s1 == 0:
            x = denoised
            continue
        a, a1 = 1 - s, 1 - s1
        d = (x - a * model.uncond_denoised) / s  # type: ignore[operator]
        x = a1 * denoised + a1 * (s1 / a1) * d
    return x


def ref_dpmpp_2m_cfg_pp(model: Guided, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    old_uncond = None
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        denoised = at(model, x, s)
        uncond = model.uncond_denoised
        if s1 == 0:
            x = denoised
        else:
            e = s1 / s  # e^(-h) with t = -log σ
            x = denoised - e * uncond + e * x  # type: ignore[operator]
            if old_uncond is not None:
                r = math.log(sigmas[i - 1] / s) / math.log(s / s1)
                x = x - math.expm1(math.log(e)) / (2 * r) * (denoised - old_uncond)
        old_uncond = uncond
    return x


def ref_res_multistep_cfg_pp(model: Guided, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    old = None
    for i in range(len(sigmas) - 1):
        s, s1 = sigmas[i], sigmas[i + 1]
        denoised = at(model, x, s)
        uncond = model.uncond_denoised
        if s1 == 0 or old is None:
            x = denoised + (x - uncond) / s * s1  # type: ignore[operator]
        else:
            h = math.log(s / s1)
            c2 = math.log(sigmas[i - 1] / s) / -h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            x = x + (denoised - uncond)  # type: ignore[operator]
            x = math.exp(-h) * x + h * ((phi1 - phi2 / c2) * uncond + phi2 / c2 * old)
        old = uncond
    return x


PLAIN = {
    "dpm_2": ref_dpm_2,
    "heunpp2": ref_heunpp2,
    "lms": ref_lms,
    "gradient_estimation": lambda m, x, s: ref_gradient_estimation(m, x, s, cfg_pp=False),
    "ipndm": ref_ipndm,
    "ipndm_v": lambda m, x, s: ref_ipndm(m, x, s, ipndm_v_ref_weights),
    "exp_heun_2_x0": ref_exp_heun_2_x0,
}
GUIDED = {
    "euler_cfg_pp": ref_euler_cfg_pp,
    "dpmpp_2m_cfg_pp": ref_dpmpp_2m_cfg_pp,
    "res_multistep_cfg_pp": ref_res_multistep_cfg_pp,
    "gradient_estimation_cfg_pp": lambda m, x, s: ref_gradient_estimation(m, x, s, cfg_pp=True),
}


@pytest.mark.parametrize("name", sorted(PLAIN))
@pytest.mark.parametrize("toy", [half, wobbly])
@pytest.mark.parametrize(("scheduler", "steps"), SCHEDULES)
def test_deterministic_sampler_matches_its_formula(name: str, toy: Toy, scheduler: str, steps: int) -> None:
    sigmas = get_sigmas(scheduler, steps)
    close(run(name, toy, sigmas), PLAIN[name](toy, x_start().double(), sigmas.tolist()))


@pytest.mark.parametrize("name", sorted(GUIDED))
@pytest.mark.parametrize(("scheduler", "steps"), SCHEDULES)
def test_cfg_pp_sampler_matches_its_formula(name: str, scheduler: str, steps: int) -> None:
    sigmas = get_sigmas(scheduler, steps)
    close(run(name, Guided(), sigmas), GUIDED[name](Guided(), x_start().double(), sigmas.tolist()))


@pytest.mark.parametrize(("scheduler", "steps"), SCHEDULES)
def test_deis_matches_the_integrals_to_the_riemann_sums_accuracy(scheduler: str, steps: int) -> None:
    """The sampler sums 10⁴ points in float32; the reference integrates in float64 (error ~1e-4 of a step)."""
    sigmas = get_sigmas(scheduler, steps)
    close(run("deis", wobbly, sigmas), ref_deis(wobbly, x_start().double(), sigmas.tolist()), tol=2e-4)


@pytest.mark.parametrize("name", sorted(GUIDED))
def test_cfg_pp_without_guidance_is_the_plain_sampler(name: str) -> None:
    """An unguided denoiser (no uncond_denoised) is its own unconditional estimate."""
    plain = name.removesuffix("_cfg_pp")
    sigmas = get_sigmas("simple", 6)
    close(run(name, wobbly, sigmas), run(plain, wobbly, sigmas).double(), tol=2e-6)


def test_ipndm_v_weights_are_consistent_and_reduce_to_ipndm_on_uniform_steps() -> None:
    """Orders 2 and 3 become iPNDM's Adams–Bashforth weights on uniform steps and sum to 1 on any.
    Order 4 of the diff-solvers formula (as ComfyUI runs it, bit for bit the same here) is another
    method: 57, -65, 43, -11 (/24) on uniform steps, and on uneven steps its weights do not sum to 1."""
    uniform = torch.linspace(1.0, 0.2, 6, dtype=torch.float64)
    uneven = torch.tensor([1.0, 0.93, 0.8, 0.62, 0.41, 0.3], dtype=torch.float64)
    for order in (2, 3):
        got = [float(w) for w in ipndm_v_weights(uniform, 4, order)]
        assert got == pytest.approx(IPNDM[order - 1], abs=1e-12)
    got = [float(w) for w in ipndm_v_weights(uniform, 4, 4)]
    assert got == pytest.approx([57 / 24, -65 / 24, 43 / 24, -11 / 24], abs=1e-12)
    for order in (2, 3):
        assert sum(float(w) for w in ipndm_v_weights(uneven, 4, order)) == pytest.approx(1.0, abs=1e-12)
    assert sum(float(w) for w in ipndm_v_weights(uneven, 4, 4)) == pytest.approx(1.06254, abs=1e-5)


def test_ddim_is_euler_and_gpu_names_are_their_cpu_samplers() -> None:
    assert SAMPLERS["ddim"] is SAMPLERS["euler"]
    for name in SAMPLERS:
        if name.endswith("_gpu"):
            assert SAMPLERS[name] is SAMPLERS[name.removesuffix("_gpu")]
