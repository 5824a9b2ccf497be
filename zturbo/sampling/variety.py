"""Seed variety: the text conditioning perturbed with seeded noise during the first steps only.

Z-Image-Turbo gives nearly the same picture for every seed: the starting noise decides little once
the prompt's features steer the first, high-noise steps. `SeedVariety` adds Gaussian noise to the
caption features the DiT receives (the Qwen3 hidden states), `strength` times their RMS, while the
sigma is still in the first `fraction` of the schedule; later steps see the prompt unchanged, so
the composition varies with the seed while the prompt still decides what is drawn.

The noise is drawn once per run on the CPU from a generator seeded with the image seed (offset, so it
is not the starting noise's stream), one draw per sample of the batch in order, then moved to the
features' device: one seed gives one perturbation on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zturbo.errors import InputError
from zturbo.sampling.noise import SEED_MAX

SEED_OFFSET = 0x5EED  # the perturbation's generator: seed + this (mod 2^64), not the latent noise's stream


@dataclass(frozen=True)
class SeedVariety:
    """Relative noise `strength` (× the features' RMS) for the first `fraction` of the schedule."""

    strength: float
    fraction: float = 0.3

    def __post_init__(self) -> None:
        check_variety(self.strength, self.fraction)

    def active_above(self, sigmas: torch.Tensor) -> float:
        """Model calls at a sigma above this are perturbed: the first ceil(fraction · steps) steps
        (decided by sigma, so a second-order sampler's in-step calls of those steps are too)."""
        steps = len(sigmas) - 1
        k = min(steps, max(1, math.ceil(self.fraction * steps - 1e-9)))
        return float(sigmas[k])

    def perturb(self, captions: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
        """Each caption (tokens, dim) plus `strength · rms(caption) · N(0, 1)`, drawn in order."""
        generator = torch.Generator("cpu").manual_seed((seed + SEED_OFFSET) % (SEED_MAX + 1))
        out = []
        for caption in captions:
            noise = torch.randn(tuple(caption.shape), dtype=torch.float32, generator=generator)
            base = caption.float()
            rms = base.square().mean().sqrt()
            out.append((base + noise.to(base.device) * (self.strength * rms)).to(caption.dtype))
        return out


def check_variety(strength: float, fraction: float, where: str = "variety") -> None:
    """One clear line for a bad strength (≥ 0) or steps fraction (0 < F ≤ 1)."""
    if not math.isfinite(strength) or strength < 0:
        raise InputError(f"{where}: strength must be 0 or more (got {strength})")
    if not math.isfinite(fraction) or not 0.0 < fraction <= 1.0:
        raise InputError(f"{where}: steps fraction must be above 0 and at most 1 (got {fraction})")
