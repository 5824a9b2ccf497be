"""Types and small helpers shared by the samplers.

Conventions (k-diffusion's, as ComfyUI uses them):

* `model(x, sigma)` is a *denoiser*: it returns the predicted clean latent x0 ("denoised").
  How the network is parameterised (velocity, timestep = 1 - sigma, ...) stays in the denoiser.
  `sigma` is a float32 tensor of shape (B,) on `x`'s device, every entry equal (ComfyUI passes
  `sigmas[i] * x.new_ones([B])`).
* `sigmas` is a 1-D float32 schedule, decreasing, normally ending in 0; a sampler takes
  `len(sigmas) - 1` steps. The samplers keep it on the CPU, so the per-step coefficients are
  computed in float32 on the CPU whatever the model's device (ComfyUI computes them on the model's
  device: the same on a CPU, possibly a last-bit different on a GPU; the CPU choice also avoids a
  device sync per step for the `sigma == 0` tests).
* Each step calls `callback(i, total, x, denoised)` with `x` the input of that step's model call.
* The CFG++ samplers also need the *unconditional* estimate of the last call (ComfyUI captures it
  with a post-CFG hook). A guiding denoiser exposes it as an `uncond_denoised` attribute, refreshed
  by every call (`GuidedDenoiser`); any other denoiser is unguided and its estimate is its own
  output. Such samplers read it through `uncond_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from zturbo.errors import InputError

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""`denoiser(x, sigma)` → denoised x0, with `sigma` a (B,) float tensor on `x`'s device."""

StepCallback = Callable[[int, int, Tensor, Tensor], None]
"""`callback(step, total_steps, x, denoised)`, once per step; raising in it aborts sampling."""


class GuidedDenoiser(Protocol):
    """A denoiser that also exposes the unconditional estimate of its last call.

    With cfg == 1 and no negative evaluated, `uncond_denoised` is the call's own output.
    """

    uncond_denoised: Tensor | None

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


def uncond_of(model: Denoiser, denoised: Tensor) -> Tensor:
    """The unconditional estimate of the call that returned `denoised` (CFG++ samplers).

    `model.uncond_denoised` where the denoiser guides (see `GuidedDenoiser`), else `denoised`.
    """
    uncond = getattr(model, "uncond_denoised", None)
    return denoised if uncond is None else uncond


class SamplerFn(Protocol):
    """The one signature every sampler has.

    `seed` drives the sampler's own noise (ignored by deterministic samplers). `shift` is the
    model's flow shift; the SDE samplers need it where ComfyUI consults `model_sampling`
    (a first sigma of 1 is moved to `percent_to_sigma(1e-4)`, which depends on the shift).
    """

    def __call__(
        self,
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        callback: StepCallback | None = None,
        seed: int = 0,
        shift: float = 3.0,
    ) -> Tensor: ...


def prepare_sigmas(x: Tensor, sigmas: Tensor) -> Tensor:
    """Check the schedule against `x` and return it as a float32 CPU tensor."""
    if sigmas.ndim != 1:
        raise InputError(f"sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise InputError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    return sigmas.detach().to(device="cpu", dtype=torch.float32)


def sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """The (B,) sigma the denoiser receives: `sigma * x.new_ones([B])`, on `x`'s device."""
    return sigma * x.new_ones([x.shape[0]])


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Karras ODE derivative dx/dσ = (x - x0)/σ; for flow models it is the velocity noise - x0."""
    return (x - denoised) / sigma


def notify(callback: StepCallback | None, i: int, sigmas: Tensor, x: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback(i, len(sigmas) - 1, x, denoised)
