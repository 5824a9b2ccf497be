"""Samplers against straight-line transcriptions of their formulas (docs: comfyui-compat.md §5).

The reference loops below are written from the formulas alone, in float64 with Python math,
independently of the package's code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from zturbo.errors import InputError
from zturbo.sampling import SAMPLERS, get_sampler, get_sigmas
from zturbo.sampling.noise import seeded_noise

Toy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
STOCHASTIC = sorted(
    {
        "euler_ancestral", "euler_ancestral_cfg_pp", "exp_heun_2_x0_sde", "dpm_2_ancestral",
        "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde",
        "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
        "ddpm", "lcm", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2",
        "seeds_3", "sa_solver", "sa_solver_pece",
    }
)  # fmt: skip
DETERMINISTIC = sorted(set(SAMPLERS) - set(STOCHASTIC))
NEEDS_TORCHSDE = {name for name in SAMPLERS if name.startswith(("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"))}
# ComfyUI offsets a first sigma of 1 to percent_to_sigma(1e-4) in these (their log-SNR must be finite)
OFFSET_FIRST_SIGMA = NEEDS_TORCHSDE | {"er_sde", "seeds_2", "seeds_3", "exp_heun_2_x0", "exp_heun_2_x0_sde"}
OFFSET_FIRST_SIGMA |= {"sa_solver", "sa_solver_pece"}
# These integrate to the last positive sigma (dpm_fast, dpm_adaptive) or to 0.001 (uni_pc), as ComfyUI's do
STOP_SHORT = {"dpm_fast", "dpm_adaptive", "uni_pc", "uni_pc_bh2"}
# One callback per model evaluation point of their own making (not one per schedule step), or the state
# after the step (UniPC): see test_sampling_formulas_solvers.py
OWN_CALLBACKS = {"dpm_fast", "dpm_adaptive", "uni_pc", "uni_pc_bh2"}
PER_STEP = sorted(set(SAMPLERS) - OWN_CALLBACKS)


def skip_without_torchsde(name: str) -> None:
    if name in NEEDS_TORCHSDE:
        pytest.importorskip("torchsde")


def half(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * x


def wobbly(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(0.8 * x) * (1 - s) + 0.3 * torch.sin(x) * s


def reference_dpmpp_2m(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    old = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = model(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        if s_next == 0:
            x = d  # (σ'/σ)·x - expm1(-∞)·D with σ' = 0
        else:
            h = -math.log(s_next) + math.log(s)
            if old is None:
                x = (s_next / s) * x - math.expm1(-h) * d
            else:
                r = (-math.log(s) + math.log(sigmas[i - 1])) / h
                x = (s_next / s) * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * d - old / (2 * r))
        old = d
    return x


def reference_res_multistep(model: Toy, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    old = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = model(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        if i == 0 or s_next == 0:
            x = x + (x - d) / s * (s_next - s)
        else:
            t = -math.log(s)
            h = -math.log(s_next) - t
            c2 = (-math.log(sigmas[i - 1]) - t) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            b2 = phi2 / c2
            b1 = phi1 - b2
            x = math.exp(-h) * x + h * (b1 * d + b2 * old)
        old = d
    return x


REFERENCES = {"dpmpp_2m": reference_dpmpp_2m, "res_multistep": reference_res_multistep}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("toy", [half, wobbly])
@pytest.mark.parametrize(("scheduler", "steps"), [("simple", 8), ("karras", 6), ("beta", 4), ("simple", 1)])
def test_multistep_samplers_match_the_formulas(name: str, toy: Toy, scheduler: str, steps: int) -> None:
    sigmas = get_sigmas(scheduler, steps)
    x = seeded_noise((2, 4, 5, 6), 11)
    got = SAMPLERS[name](toy, x, sigmas)
    want = REFERENCES[name](toy, x.double(), [float(s) for s in sigmas])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_res_multistep_differs_from_euler_after_the_first_step() -> None:
    x, sigmas = seeded_noise((1, 4, 4, 4), 3), get_sigmas("simple", 4)
    assert not torch.allclose(
        SAMPLERS["res_multistep"](wobbly, x, sigmas), SAMPLERS["euler"](wobbly, x, sigmas)
    )


def test_euler_is_the_flow_euler_step() -> None:
    x = seeded_noise((1, 4, 4, 4), 5)
    sigmas = torch.tensor([1.0, 0.6, 0.25, 0.0])
    want = x.clone()
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        velocity = (want - wobbly(want, torch.tensor([s]))) / s
        want = want + velocity * (s_next - s)
    torch.testing.assert_close(SAMPLERS["euler"](wobbly, x, sigmas), want)


def test_heun_averages_two_slopes() -> None:
    x = seeded_noise((1, 4, 4, 4), 6)
    s0, s1 = 0.8, 0.5
    d0 = (x - wobbly(x, torch.tensor([s0]))) / s0
    x_euler = x + d0 * (s1 - s0)
    d1 = (x_euler - wobbly(x_euler, torch.tensor([s1]))) / s1
    want = x + (d0 + d1) / 2 * (s1 - s0)
    torch.testing.assert_close(SAMPLERS["heun"](wobbly, x, torch.tensor([s0, s1])), want)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_reproduce_a_seed_and_differ_across_seeds(name: str) -> None:
    skip_without_torchsde(name)
    x, sigmas = seeded_noise((1, 4, 8, 8), 1), get_sigmas("simple", 6)
    state = torch.get_rng_state()
    first = SAMPLERS[name](wobbly, x, sigmas, seed=7)
    assert torch.equal(first, SAMPLERS[name](wobbly, x, sigmas, seed=7))
    assert not torch.allclose(first, SAMPLERS[name](wobbly, x, sigmas, seed=8))
    assert torch.equal(torch.get_rng_state(), state)  # no torch.randn_like inside


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_ignore_the_seed(name: str) -> None:
    x, sigmas = seeded_noise((1, 4, 8, 8), 1), get_sigmas("simple", 5)
    assert torch.equal(SAMPLERS[name](wobbly, x, sigmas, seed=1), SAMPLERS[name](wobbly, x, sigmas, seed=2))


@pytest.mark.parametrize("name", PER_STEP)
def test_callback_once_per_step_with_the_model_input(name: str) -> None:
    skip_without_torchsde(name)
    sigmas = get_sigmas("simple", 5)
    model_inputs: list[torch.Tensor] = []
    calls: list[tuple[int, int]] = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        model_inputs.append(x)
        return wobbly(x, sigma)

    def callback(i: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        calls.append((i, total))
        assert x is model_inputs[-1] and denoised.shape == x.shape

    SAMPLERS[name](model, seeded_noise((1, 4, 4, 4), 2), sigmas, callback=callback, seed=3)
    assert calls == [(i, 5) for i in range(5)]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_an_exception_in_the_callback_aborts(name: str) -> None:
    skip_without_torchsde(name)

    def stop(i: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SAMPLERS[name](wobbly, seeded_noise((1, 2, 4, 4), 0), get_sigmas("simple", 4), callback=stop)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_model_gets_a_batch_of_equal_sigmas(name: str) -> None:
    skip_without_torchsde(name)
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(sigma)
        return half(x, sigma)

    sigmas = get_sigmas("simple", 4)
    SAMPLERS[name](model, seeded_noise((3, 2, 4, 4), 0), sigmas)
    assert all(s.shape == (3,) and s.dtype == torch.float32 and bool((s == s[0]).all()) for s in seen)
    first = seen[0][0].item()
    if name in OFFSET_FIRST_SIGMA:
        assert first == pytest.approx(3 * 0.9999 / (1 + 2 * 0.9999), abs=1e-7)
    else:
        assert first == 1.0


def point_mass(target: torch.Tensor) -> Toy:
    return lambda x, sigma: target.expand_as(x).clone()


def gaussian_denoiser(mu: float, s: float) -> Toy:
    """Exact E[x0 | x] for x0 ~ N(mu, s²) and x = (1-σ)·x0 + σ·noise."""

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig = sigma.view(-1, *([1] * (x.ndim - 1))).double()
        a = 1 - sig
        gain = a * s * s / (a * a * s * s + sig * sig)
        return (mu + gain * (x.double() - a * mu)).to(x.dtype)

    return model


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - STOP_SHORT))
def test_every_sampler_lands_on_a_single_data_point(name: str) -> None:
    skip_without_torchsde(name)
    target = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    out = SAMPLERS[name](point_mass(target), seeded_noise((2, 1, 4, 4), 4), get_sigmas("simple", 8), seed=1)
    torch.testing.assert_close(out, target.expand(2, 1, 4, 4), rtol=0, atol=1e-5)


def gaussian_flow_error(name: str, steps: int) -> float:
    mu, s = 0.4, 0.6
    noise = seeded_noise((1, 4, 16, 16), 21)
    out = SAMPLERS[name](gaussian_denoiser(mu, s), noise, get_sigmas("karras", steps))
    return (out - (mu + s * noise)).abs().max().item()


@pytest.mark.parametrize("name", sorted(set(DETERMINISTIC) - STOP_SHORT))
def test_ode_samplers_follow_the_exact_gaussian_flow(name: str) -> None:
    """For Gaussian data the probability-flow ODE maps noise ε to μ + s·ε exactly.

    karras ends at σ_min ≈ 0.003, so the final "return D" step adds almost no bias; the error
    then shrinks at least like 1/N (Euler) as steps grow.
    """
    coarse, fine = gaussian_flow_error(name, 25), gaussian_flow_error(name, 100)
    assert fine < 0.06
    assert fine < coarse / 3


@pytest.mark.parametrize("name", sorted(STOP_SHORT))
def test_samplers_that_stop_short_end_near_the_exact_flow(name: str) -> None:
    """They stop at the last positive sigma (karras: σ_min ≈ 0.003) or at 0.001, so the error has a
    floor of that order instead of shrinking with the steps; it is already there at 25 steps."""
    assert gaussian_flow_error(name, 25) < 0.01
    assert gaussian_flow_error(name, 100) < 0.01


# ComfyUI has no flow ("RF") form of these: ddpm applies VP formulas, res_multistep_ancestral and
# dpmpp_2s_ancestral_cfg_pp the variance-exploding ancestral split to the flow model, and lcm re-noises
# the posterior mean (which loses variance unless the model is a consistency model). None of them
# samples the flow's marginals, so the distribution check below does not apply; their formula and
# ComfyUI-parity tests still do.
NOT_FLOW_MARGINALS = {"ddpm", "lcm", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp"}
NOT_FLOW_MARGINALS |= {"dpmpp_2s_ancestral_cfg_pp"}


@pytest.mark.parametrize("name", sorted(set(STOCHASTIC) - NOT_FLOW_MARGINALS))
def test_sde_samplers_sample_the_gaussian_data(name: str) -> None:
    skip_without_torchsde(name)
    mu, s = 0.4, 0.6
    noise = seeded_noise((1, 4, 64, 64), 22)
    out = SAMPLERS[name](gaussian_denoiser(mu, s), noise, get_sigmas("karras", 100), seed=3)
    assert out.mean().item() == pytest.approx(mu, abs=0.03)
    assert out.std().item() == pytest.approx(s, abs=0.03)


def test_required_sampler_names() -> None:
    required = {"euler", "euler_ancestral", "res_multistep", "dpmpp_2m", "dpmpp_2m_sde", "er_sde"}
    assert required <= set(SAMPLERS)


def test_unknown_sampler_lists_valid_names() -> None:
    with pytest.raises(InputError) as err:
        get_sampler("ddim_magic")
    for name in SAMPLERS:
        assert name in str(err.value)


def test_sigmas_must_be_one_dimensional() -> None:
    with pytest.raises(InputError):
        SAMPLERS["euler"](half, torch.zeros(1, 2), torch.zeros(2, 2))
