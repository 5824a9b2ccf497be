"""`ZImageDenoiser` with seed variety: which model calls see perturbed captions, and which do not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zturbo.models.denoiser import ZImageDenoiser
from zturbo.sampling import get_sigmas, seeded_noise
from zturbo.sampling.variety import SeedVariety


class CaptionRecorder(nn.Module):
    """A batched-API stand-in for the DiT that keeps the captions of every call; out = 0."""

    batched_api = True

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls: list[list[torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, caps: list[torch.Tensor]) -> torch.Tensor:
        self.calls.append([c.clone() for c in caps])
        return torch.zeros_like(x)


POSITIVE = [torch.linspace(-2, 2, 5 * 8).view(5, 8)]
NEGATIVE = [torch.full((3, 8), -0.25)]


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_the_first_steps_see_the_seeded_perturbation_and_the_rest_the_prompt(cfg: float) -> None:
    model, sigmas = CaptionRecorder(), get_sigmas("simple", 8, shift=3.0)
    variety = SeedVariety(0.5, 0.3)
    denoiser = ZImageDenoiser(model, POSITIVE, NEGATIVE, cfg, sigmas=sigmas, variety=variety, seed=9)
    x = seeded_noise((2, 4, 4, 4), 1)
    for sigma in sigmas[:-1]:
        denoiser(x, sigma.expand(2))
    expected = variety.perturb(POSITIVE * 2, 9)  # one draw per sample of the batch
    assert not torch.equal(expected[0], expected[1])
    for step, caps in enumerate(model.calls):
        positives, negatives = caps[:2], caps[2:]
        wanted = expected if step < 3 else POSITIVE * 2  # ceil(0.3 · 8) = 3 steps
        assert all(torch.equal(a, b) for a, b in zip(positives, wanted, strict=True)), step
        assert all(torch.equal(n, NEGATIVE[0]) for n in negatives)  # the negative is never perturbed
        assert len(negatives) == (2 if cfg != 1.0 else 0)


def test_strength_zero_never_perturbs(monkeypatch) -> None:
    def never(*_args):
        raise AssertionError("perturbed at strength 0")

    monkeypatch.setattr(SeedVariety, "perturb", never)
    model, sigmas = CaptionRecorder(), get_sigmas("simple", 4, shift=3.0)
    denoiser = ZImageDenoiser(model, POSITIVE, None, 1.0, sigmas=sigmas, variety=SeedVariety(0.0), seed=1)
    denoiser(seeded_noise((1, 4, 4, 4), 1), sigmas[0].view(1))
    assert torch.equal(model.calls[0][0], POSITIVE[0])
