"""Shared pieces of the sampler formula tests: toy denoisers, the flow's log-SNR, reference noise.

The references in the test modules are written from the samplers' formulas in float64 (Python math for
the per-step coefficients), independently of the package's code. The sampler runs in float32, so the
comparisons allow the float32 rounding of a few dozen operations per step (1e-5 unless stated).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Toy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SHAPE = (2, 3, 4, 5)
SHIFT = 3.0


def half(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * x


def wobbly(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(0.8 * x) * (1 - s) + 0.3 * torch.sin(x) * s


def wobbly_uncond(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return 0.7 * wobbly(x, sigma) - 0.1


class Guided:
    """A CFG denoiser on toys: uncond + cfg·(cond - uncond), exposing `uncond_denoised` like ZImageDenoiser."""

    def __init__(self, cfg: float = 2.5) -> None:
        self.cfg = cfg
        self.uncond_denoised: torch.Tensor | None = None
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input, uncond) per call

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        cond, uncond = wobbly(x, sigma), wobbly_uncond(x, sigma)
        self.uncond_denoised = uncond
        self.calls.append((x, uncond))
        return uncond + self.cfg * (cond - uncond)


def at(model: Toy, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The model at a Python-float sigma, with a (B,) sigma of x's dtype."""
    return model(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))


def lam(sigma: float) -> float:
    """Flow half log-SNR λ = log((1-σ)/σ)."""
    return math.log((1 - sigma) / sigma)


def sigma_of(lam_: float) -> float:
    return 1 / (1 + math.exp(lam_))


def offset_first(sigmas: list[float]) -> list[float]:
    """ComfyUI's offset of a first sigma of 1 to percent_to_sigma(1e-4) at shift 3."""
    if sigmas[0] >= 1:
        t = 1 - 1e-4
        sigmas = [SHIFT * t / (1 + (SHIFT - 1) * t), *sigmas[1:]]
    return sigmas


def ancestral(sigma: float, sigma_next: float) -> tuple[float, float]:
    """k-diffusion's σ_down, σ_up (eta 1)."""
    up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def rf_ancestral(sigma: float, sigma_next: float) -> tuple[float, float, float]:
    """Rectified-flow ancestral split (eta 1): σ_d = σ'²/σ, rescale α'/α_d, renoise amount."""
    down = sigma_next * sigma_next / sigma
    renoise = math.sqrt(sigma_next**2 - down**2 * (1 - sigma_next) ** 2 / (1 - down) ** 2)
    return down, (1 - sigma_next) / (1 - down), renoise


class CpuNoise:
    """The default noise sampler's draws: randn(shape) from a CPU generator seeded with seed + 1."""

    def __init__(self, seed: int, shape: tuple[int, ...] = SHAPE) -> None:
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.shape = shape

    def __call__(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.generator).double()


def close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
