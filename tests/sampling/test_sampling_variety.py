"""Seed variety's perturbation: seeded, scaled to the features' RMS, on the first steps' sigmas only."""

from __future__ import annotations

import math

import pytest
import torch

from zturbo.errors import InputError
from zturbo.sampling.schedules import get_sigmas
from zturbo.sampling.variety import SeedVariety


def captions() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [3.0 * torch.randn(40, 64, generator=gen), 0.5 * torch.randn(12, 64, generator=gen)]


def test_perturbation_is_seeded_and_leaves_the_input_alone() -> None:
    caps = captions()
    before = [c.clone() for c in caps]
    a, again, other = (SeedVariety(0.4).perturb(caps, seed) for seed in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, again, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(a, other, strict=True))
    assert all(torch.equal(c, b) for c, b in zip(caps, before, strict=True))


@pytest.mark.parametrize("strength", [0.1, 0.5, 2.0])
def test_noise_is_strength_times_each_captions_rms(strength: float) -> None:
    caps = captions()
    for caption, varied in zip(caps, SeedVariety(strength).perturb(caps, 11), strict=True):
        assert varied.shape == caption.shape and varied.dtype == caption.dtype
        rms = float(caption.square().mean().sqrt())
        added = float((varied - caption).square().mean().sqrt())
        # the added noise's RMS is strength·rms times a sample RMS of n ≥ 768 unit normals,
        # whose relative standard deviation is 1/sqrt(2n) ≤ 2.6%: 10% is four of them
        assert added == pytest.approx(strength * rms, rel=0.10)


@pytest.mark.parametrize(
    ("steps", "fraction", "perturbed"), [(8, 0.3, 3), (8, 1.0, 8), (8, 0.01, 1), (4, 0.5, 2)]
)
def test_only_the_first_fraction_of_steps_is_perturbed(steps: int, fraction: float, perturbed: int) -> None:
    sigmas = get_sigmas("simple", steps, shift=3.0)
    above = SeedVariety(0.3, fraction).active_above(sigmas)
    step_sigmas = sigmas[:-1]  # the sigma each step's model call is made at
    assert int((step_sigmas > above).sum()) == perturbed == max(1, math.ceil(fraction * steps))


@pytest.mark.parametrize(
    ("strength", "fraction", "message"),
    [(-0.1, 0.3, "strength must be 0 or more"), (0.2, 0.0, "steps fraction"), (0.2, 1.5, "steps fraction"),
     (float("nan"), 0.3, "strength")],
)  # fmt: skip
def test_bad_values_are_one_clear_line(strength: float, fraction: float, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        SeedVariety(strength, fraction)
    assert "\n" not in str(caught.value)
