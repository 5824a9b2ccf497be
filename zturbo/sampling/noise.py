"""Seeded noise, the way ComfyUI draws it, without touching torch's global RNG.

Two kinds of noise exist in a ComfyUI run:

* the starting noise (`comfy.sample.prepare_noise`): one CPU generator seeded with the seed,
  the whole batch drawn at once in float32, so a seed gives the same latent noise on any device;
* the noise ancestral and SDE samplers add while sampling: a per-step sampler seeded from the
  same seed (`default_noise_sampler`: seed + 1 on the CPU) or a Brownian tree (`torchsde`)
  for `dpmpp_2m_sde` / `dpmpp_sde`.

Where ComfyUI draws sampler noise on the model's device (CUDA's Philox stream differs from the
CPU's Mersenne Twister), we always draw on the CPU and move the result: one seed then gives one
image on every device, and it is ComfyUI's CPU result.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from zturbo.errors import GenerationError, InputError

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""`noise_sampler(sigma, sigma_next)` → unit-variance noise for the step sigma → sigma_next."""

SEED_MAX = 2**64 - 1


def _cpu_generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed must be a whole number from 0 to {SEED_MAX}, got {seed!r}")
    return torch.Generator("cpu").manual_seed(seed)


def seeded_noise(shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """ComfyUI's starting noise for a batch: `randn(shape)` from a CPU generator seeded with `seed`.

    Equal to `torch.randn(shape, generator=torch.manual_seed(seed))`, but a fresh generator is
    used, so the global RNG is left alone (ComfyUI's `torch.manual_seed` reseeds it). Drawn in
    float32 then cast, as `prepare_noise` does; the result lives on the CPU.
    """
    generator = _cpu_generator(seed)
    return torch.randn(tuple(shape), dtype=torch.float32, generator=generator).to(dtype)


def default_noise_sampler(x: Tensor, seed: int) -> NoiseSampler:
    """Per-step noise for ancestral samplers (ComfyUI `default_noise_sampler` as run on a CPU).

    ComfyUI seeds a generator on `x.device` with `seed + 1` on the CPU and `seed` elsewhere, so
    its CUDA results differ from its CPU ones. We always use a CPU generator with `seed + 1`
    (wrapping at 2**64) and move each draw to `x`'s device and dtype: device-independent, and
    identical to ComfyUI on the CPU.
    """
    generator = _cpu_generator((seed + 1) % (SEED_MAX + 1))
    shape, device, dtype = x.shape, x.device, x.dtype

    def draw(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        noise = torch.randn(shape, dtype=torch.float32, generator=generator)
        return noise.to(device=device, dtype=dtype)

    return draw


class BrownianTreeNoiseSampler:
    """Noise from one Brownian motion W(σ) fixed by the seed (ComfyUI `BrownianTreeNoiseSampler`).

    A step σ → σ' gets `(W(σ') - W(σ)) / sqrt(|σ' - σ|)`: increments over overlapping intervals
    are consistent, so a seed describes one noise path whatever the step count, which is what the
    DPM-Solver++ SDE samplers assume (Lu et al. 2022). The tree is `torchsde.BrownianTree` in
    float32 on the CPU, seeded with `entropy=seed`, as ComfyUI's `cpu=True` tree is; results are
    moved to `x`'s device.

    torchsde rounds the interval ends to 6 decimals, so a query at the exact smallest or largest
    sigma is clamped with a UserWarning; ComfyUI gets the same clamp (and the warnings). We keep the
    clamp and silence those warnings.
    """

    def __init__(self, x: Tensor, sigma_min: Tensor, sigma_max: Tensor, seed: int) -> None:
        try:
            import torchsde
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise GenerationError(
                "the dpmpp_2m_sde and dpmpp_sde samplers need the 'torchsde' package (pip install torchsde)"
            ) from exc
        _cpu_generator(seed)  # validates the seed range
        t0, t1 = sorted((sigma_min.detach().cpu(), sigma_max.detach().cpu()), key=float)
        w0 = torch.zeros(x.shape, dtype=torch.float32)
        self._tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)
        self._device, self._dtype = x.device, x.dtype

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = self._tree(low.detach().cpu().float(), high.detach().cpu().float())
        w = w.to(dtype=t0.dtype) * sign
        noise = w / (t1 - t0).abs().sqrt()
        return noise.to(device=self._device, dtype=self._dtype)
