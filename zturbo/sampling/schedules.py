"""Noise schedules for flow (rectified-flow, ComfyUI "CONST") models such as Z-Image.

Everything here reproduces ComfyUI's `ModelSamplingDiscreteFlow` and the schedulers of
`comfy/samplers.py` operation for operation (float32 tables, the same rounding points), so a
scheduler name, step count, shift and denoise give bit-identical sigmas to ComfyUI.

Every scheduler returns a float32 CPU tensor of decreasing sigmas ending in 0 (k-diffusion
convention: `len(sigmas) - 1` steps). Schedules are pure functions of a `FlowSampling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from zturbo.errors import InputError

_T = TypeVar("_T", float, Tensor)


def time_snr_shift(alpha: float, t: _T) -> _T:
    """Shift a flow time `t` in [0, 1] towards noise: `alpha*t / (1 + (alpha-1)*t)`.

    This is the resolution-dependent timestep shift of SD3 (Esser et al. 2024, eq. 23); ComfyUI's
    ModelSamplingSD3/AuraFlow nodes expose `alpha` as "shift". `alpha == 1` returns `t` untouched,
    as ComfyUI does, so shift 1 reproduces the unshifted table exactly.
    """
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def flow_sigma_table(shift: float, multiplier: float = 1.0, timesteps: int = 1000) -> Tensor:
    """ComfyUI's ModelSamplingDiscreteFlow table: `table[k] = time_snr_shift(shift, (k+1)/timesteps)`.

    ComfyUI builds it as `sigma((arange(1, T+1) / T) * multiplier)` with `sigma(ts) =
    time_snr_shift(shift, ts / multiplier)`; the multiply-then-divide is kept because it decides
    the last float32 bit. Z-Image (and ModelSamplingAuraFlow) use multiplier 1.0; SD3 uses 1000.
    """
    ts = torch.arange(1, timesteps + 1, 1) / timesteps * multiplier
    return time_snr_shift(shift, ts / multiplier)


def sigma_to_timestep(sigma: Tensor, multiplier: float = 1.0) -> Tensor:
    """The model's timestep for a sigma (ComfyUI `ModelSamplingDiscreteFlow.timestep`)."""
    return sigma * multiplier


def timestep_to_sigma(timestep: Tensor, shift: float, multiplier: float = 1.0) -> Tensor:
    """Inverse of `sigma_to_timestep` through the shifted curve (ComfyUI `.sigma`)."""
    return time_snr_shift(shift, timestep / multiplier)


def percent_to_sigma(percent: float, shift: float) -> float:
    """ComfyUI `percent_to_sigma` for flow models: 0 % → 1.0, 100 % → 0.0, else the shifted 1-percent.

    Used by the SDE samplers to move a first sigma of 1 (infinite log-SNR) to `percent_to_sigma(1e-4)`.
    """
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    return time_snr_shift(shift, 1.0 - percent)


@dataclass(frozen=True)
class FlowSampling:
    """The model-side sampling settings a scheduler needs (ComfyUI's `model_sampling` object)."""

    shift: float = 3.0
    multiplier: float = 1.0
    timesteps: int = 1000
    sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", flow_sigma_table(self.shift, self.multiplier, self.timesteps))

    @property
    def sigma_min(self) -> Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: Tensor) -> Tensor:
        return sigma_to_timestep(sigma, self.multiplier)

    def sigma(self, timestep: Tensor) -> Tensor:
        return timestep_to_sigma(timestep, self.shift, self.multiplier)


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _as_sigmas(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


def simple(ms: FlowSampling, steps: int) -> Tensor:
    """Evenly spaced picks from the table, top down: `table[T-1 - int(i*T/steps)]`, then 0."""
    stride = len(ms.sigmas) / steps
    picks = [float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return _as_sigmas([*picks, 0.0])


def normal(ms: FlowSampling, steps: int) -> Tensor:
    """Linear in model timestep from sigma_max to sigma_min, mapped back through the shift, then 0.

    Like ComfyUI, when sigma_min is already ~0 (|σ| ≤ 1e-5, only at absurdly small shifts) one more
    point is taken instead of appending 0.
    """
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append_zero = not math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001)
    timesteps = torch.linspace(start, end, steps if append_zero else steps + 1)
    sigmas = [float(ms.sigma(ts)) for ts in timesteps]
    return _as_sigmas(sigmas + [0.0] if append_zero else sigmas)


def sgm_uniform(ms: FlowSampling, steps: int) -> Tensor:
    """`normal` with steps+1 points and the last (sigma_min) dropped (SGM/Stability "uniform")."""
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    timesteps = torch.linspace(start, end, steps + 1)[:-1]
    return _as_sigmas([float(ms.sigma(ts)) for ts in timesteps] + [0.0])


def beta(ms: FlowSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> Tensor:
    """Beta-distribution spaced table picks (Lee et al. 2024, arXiv:2407.12173), then 0.

    Indices are `rint(Beta(α, β).ppf(1 - i/steps) * (T-1))`; consecutive duplicate indices are
    dropped (so a schedule can have fewer than `steps` steps), exactly as ComfyUI does.
    """
    import numpy as np
    from scipy import stats

    last = len(ms.sigmas) - 1
    ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta_) * last)
    picks: list[float] = []
    previous = -1.0
    for t in ts:
        if t != previous:
            picks.append(float(ms.sigmas[int(t)]))
        previous = t
    return _as_sigmas([*picks, 0.0])


def karras(ms: FlowSampling, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022, eq. 5): uniform in sigma^(1/rho) from sigma_max to sigma_min, then 0."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(ms: FlowSampling, steps: int) -> Tensor:
    """Uniform in log sigma from sigma_max to sigma_min, then 0."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def ddim_uniform(ms: FlowSampling, steps: int) -> Tensor:
    """Every `T // steps`-th table entry from index 1 upwards, reversed, ending in 0.

    As in ComfyUI the count is not always `steps` (e.g. 7 requested → 8 taken when T % steps
    leaves room for one more stride).
    """
    if math.isclose(float(ms.sigmas[1]), 0, abs_tol=0.00001):
        steps, picks = steps + 1, []
    else:
        picks = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    picks += [float(ms.sigmas[k]) for k in range(1, len(ms.sigmas), stride)]
    return _as_sigmas(picks[::-1])


def linear_quadratic(ms: FlowSampling, steps: int, threshold_noise: float = 0.025) -> Tensor:
    """Mochi's schedule (genmoai): linear to `threshold_noise` for half the steps, then quadratic."""
    if steps == 1:
        return _as_sigmas([1.0, 0.0]) * ms.sigma_max
    linear_steps = steps // 2
    linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    step_diff = linear_steps - threshold_noise * steps
    quadratic_steps = steps - linear_steps
    quad_coef = step_diff / (linear_steps * quadratic_steps**2)
    lin_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
    const = quad_coef * (linear_steps**2)
    quadratic = [quad_coef * (i**2) + lin_coef * i + const for i in range(linear_steps, steps)]
    return _as_sigmas([1.0 - s for s in [*linear, *quadratic, 1.0]]) * ms.sigma_max


def kl_optimal(ms: FlowSampling, steps: int) -> Tensor:
    """KL-optimal schedule (Align Your Steps, Sabour et al. 2024): uniform in atan(sigma), then 0.

    ComfyUI divides by `steps - 1`, which gives NaN for one step; we return [sigma_max, 0] there.
    """
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    ramp = torch.arange(steps, dtype=torch.float)
    if steps > 1:
        ramp = ramp.div_(steps - 1)
    sigmas = ramp.new_zeros(steps + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


Scheduler = Callable[[FlowSampling, int], Tensor]

SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}


def get_sigmas(
    scheduler: str,
    steps: int,
    *,
    shift: float = 3.0,
    denoise: float = 1.0,
    multiplier: float = 1.0,
    discard_penultimate: bool = False,
) -> Tensor:
    """The sigmas ComfyUI's KSampler would use for `scheduler`, `steps` and `denoise`.

    denoise < 1 (img2img) follows `KSampler.set_steps`: compute `int(steps / denoise)` steps and
    keep the last `steps + 1` sigmas; denoise > 0.9999 counts as 1; denoise <= 0 gives an empty
    tensor (nothing to sample). `discard_penultimate` is KSampler's treatment of some samplers
    (`samplers.DISCARD_PENULTIMATE_SIGMA`): one more step is scheduled and its penultimate sigma
    dropped, before the denoise cut. Returns float32 on the CPU.
    """
    if scheduler not in SCHEDULERS:
        raise InputError(f"unknown scheduler {scheduler!r}; valid schedulers: {', '.join(SCHEDULERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number >= 1, got {steps!r}")
    if not (math.isfinite(shift) and shift > 0):
        raise InputError(f"shift must be a positive number, got {shift!r}")
    if not math.isfinite(denoise):
        raise InputError(f"denoise must be a number between 0 and 1, got {denoise!r}")
    ms = FlowSampling(shift=shift, multiplier=multiplier)

    def schedule(n: int) -> Tensor:
        if not discard_penultimate:
            return SCHEDULERS[scheduler](ms, n)
        sigmas = SCHEDULERS[scheduler](ms, n + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])

    if denoise > 0.9999:
        return schedule(steps)
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    return schedule(int(steps / denoise))[-(steps + 1) :]
