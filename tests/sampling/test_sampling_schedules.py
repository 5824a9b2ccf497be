"""Schedules against values computed independently from the formulas (float64, NumPy/SciPy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from zturbo.errors import InputError
from zturbo.sampling.schedules import (
    SCHEDULERS,
    flow_sigma_table,
    get_sigmas,
    percent_to_sigma,
    sigma_to_timestep,
    time_snr_shift,
    timestep_to_sigma,
)


def shifted(shift: float, t: np.ndarray | float) -> np.ndarray | float:
    return shift * t / (1 + (shift - 1) * t)


def table64(shift: float) -> np.ndarray:
    return shifted(shift, np.arange(1, 1001) / 1000)


def close(got: torch.Tensor, want: list[float] | np.ndarray, atol: float = 1e-6) -> None:
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), np.asarray(want, dtype=np.float64), rtol=0, atol=atol)


def test_flow_table_is_the_shifted_uniform_grid() -> None:
    table = flow_sigma_table(3.0)
    assert table.shape == (1000,) and table.dtype == torch.float32
    close(table, table64(3.0))
    assert table[-1].item() == 1.0
    assert table[0].item() == pytest.approx(0.002994, abs=1e-6)


def test_multiplier_only_rescales_the_timestep() -> None:
    close(flow_sigma_table(3.0, multiplier=1000.0), table64(3.0))
    sigma = torch.tensor([0.25, 0.5])
    assert torch.equal(sigma_to_timestep(sigma, 1000.0), sigma * 1000.0)
    close(timestep_to_sigma(torch.tensor([0.25, 0.5]), 3.0), shifted(3.0, np.array([0.25, 0.5])))


def test_time_snr_shift_and_percent_to_sigma() -> None:
    assert time_snr_shift(1.0, 0.3) == 0.3
    assert time_snr_shift(3.0, 0.5) == pytest.approx(0.75)
    assert percent_to_sigma(0.0, 3.0) == 1.0
    assert percent_to_sigma(1.0, 3.0) == 0.0
    assert percent_to_sigma(1e-4, 3.0) == pytest.approx(3 * 0.9999 / (1 + 2 * 0.9999))


def test_simple_shift3_8_steps() -> None:
    want = [1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0.0]
    close(get_sigmas("simple", 8, shift=3.0), want, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 4, 9, 30])
def test_simple_picks_every_n_th_table_entry(steps: int) -> None:
    table = table64(3.0)
    want = [table[999 - math.floor(i * 1000 / steps)] for i in range(steps)] + [0.0]
    close(get_sigmas("simple", steps), want)


@pytest.mark.parametrize("steps", [1, 5, 8, 25])
def test_normal_is_linear_in_timestep_mapped_back(steps: int) -> None:
    table = table64(3.0)
    want = list(shifted(3.0, np.linspace(table[-1], table[0], steps))) + [0.0]
    close(get_sigmas("normal", steps), want)


@pytest.mark.parametrize("steps", [1, 6, 8])
def test_sgm_uniform_drops_the_last_point(steps: int) -> None:
    table = table64(3.0)
    want = list(shifted(3.0, np.linspace(table[-1], table[0], steps + 1)[:-1])) + [0.0]
    close(get_sigmas("sgm_uniform", steps), want)


@pytest.mark.parametrize("steps", [2, 8, 20])
def test_karras_rho_7(steps: int) -> None:
    lo, hi = table64(3.0)[0], 1.0
    ramp = np.linspace(0, 1, steps)
    want = list((hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7) + [0.0]
    close(get_sigmas("karras", steps), want, atol=2e-6)


@pytest.mark.parametrize("steps", [2, 8, 20])
def test_exponential_is_log_linear(steps: int) -> None:
    lo = table64(3.0)[0]
    want = list(np.exp(np.linspace(0.0, math.log(lo), steps))) + [0.0]
    close(get_sigmas("exponential", steps), want)


def beta_reference(steps: int, shift: float = 3.0) -> list[float]:
    table = table64(shift)
    idx = np.rint(stats.beta.ppf(1 - np.arange(steps) / steps, 0.6, 0.6) * 999)
    kept = [int(t) for k, t in enumerate(idx) if k == 0 or t != idx[k - 1]]
    return [table[k] for k in kept] + [0.0]


@pytest.mark.parametrize("steps", [1, 8, 20])
def test_beta_alpha_beta_0_6(steps: int) -> None:
    close(get_sigmas("beta", steps), beta_reference(steps))


def test_beta_drops_duplicate_timesteps() -> None:
    sigmas = get_sigmas("beta", 600)
    assert len(sigmas) == len(beta_reference(600)) < 601
    assert bool((sigmas[:-1] > sigmas[1:]).all())


def test_ddim_uniform_strides_from_index_1() -> None:
    table = table64(3.0)
    close(get_sigmas("ddim_uniform", 8), [table[k] for k in range(1, 1000, 125)][::-1] + [0.0])
    assert len(get_sigmas("ddim_uniform", 7)) == 9  # 1000 // 7 = 142 leaves room for an 8th pick


def test_linear_quadratic_matches_mochi_formula() -> None:
    steps, thr, lin = 8, 0.025, 4
    diff = lin - thr * steps
    quad_coef = diff / (lin * (steps - lin) ** 2)
    lin_coef = thr / lin - 2 * diff / (steps - lin) ** 2
    sched = [i * thr / lin for i in range(lin)]
    sched += [quad_coef * i * i + lin_coef * i + quad_coef * lin * lin for i in range(lin, steps)]
    close(get_sigmas("linear_quadratic", steps), [1.0 - s for s in [*sched, 1.0]])
    close(get_sigmas("linear_quadratic", 1), [1.0, 0.0])


def test_kl_optimal_is_uniform_in_atan() -> None:
    lo = table64(3.0)[0]
    ramp = np.arange(8) / 7
    close(
        get_sigmas("kl_optimal", 8), list(np.tan(ramp * math.atan(lo) + (1 - ramp) * math.atan(1.0))) + [0.0]
    )
    close(get_sigmas("kl_optimal", 1), [1.0, 0.0])


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 3, 8, 40])
def test_every_scheduler_is_float32_cpu_decreasing_to_zero(name: str, steps: int) -> None:
    sigmas = get_sigmas(name, steps, shift=3.0)
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu" and sigmas.ndim == 1
    assert sigmas[-1].item() == 0.0 and sigmas[0].item() <= 1.0
    assert bool((sigmas[:-1] >= sigmas[1:]).all())


def test_required_scheduler_names() -> None:
    required = {"simple", "normal", "sgm_uniform", "beta", "karras", "exponential"}
    assert required <= set(SCHEDULERS)


def test_denoise_keeps_the_tail_of_a_longer_schedule() -> None:
    full = get_sigmas("simple", 8)
    assert torch.equal(get_sigmas("simple", 4, denoise=0.5), full[-5:])
    assert torch.equal(get_sigmas("normal", 4, denoise=0.3), get_sigmas("normal", 13)[-5:])  # int(4/0.3)
    assert torch.equal(get_sigmas("simple", 8, denoise=0.99999), full)


@pytest.mark.parametrize("denoise", [0.0, -0.5])
def test_denoise_zero_gives_nothing_to_do(denoise: float) -> None:
    sigmas = get_sigmas("simple", 8, denoise=denoise)
    assert sigmas.numel() == 0 and sigmas.dtype == torch.float32


def test_shift_changes_the_schedule() -> None:
    close(get_sigmas("simple", 4, shift=1.0), [1.0, 0.75, 0.5, 0.25, 0.0])
    assert get_sigmas("simple", 4, shift=6.0)[1] > get_sigmas("simple", 4, shift=3.0)[1]


def test_unknown_scheduler_lists_valid_names() -> None:
    with pytest.raises(InputError) as err:
        get_sigmas("nope", 8)
    for name in SCHEDULERS:
        assert name in str(err.value)


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"steps": 2.5}, {"steps": 8, "shift": 0.0}])
def test_bad_arguments_are_input_errors(kwargs: dict[str, float]) -> None:
    steps = kwargs.pop("steps")
    with pytest.raises(InputError):
        get_sigmas("simple", steps, **kwargs)  # type: ignore[arg-type]
