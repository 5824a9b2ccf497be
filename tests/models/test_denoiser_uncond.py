"""`ZImageDenoiser.uncond_denoised`: the unconditional estimate the CFG++ samplers read."""

from __future__ import annotations

import torch
from torch import nn

from zturbo.models.denoiser import ZImageDenoiser
from zturbo.sampling import SAMPLERS, get_sigmas, seeded_noise


class CaptionScale(nn.Module):
    """A batched-API stand-in for the DiT: out = x·mean(caption)·(1 - t); counts its batch rows."""

    batched_api = True

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.rows = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, caps: list[torch.Tensor]) -> torch.Tensor:
        self.rows += x.shape[0]
        scale = torch.stack([c.mean() for c in caps]).view(-1, 1, 1, 1)
        return x * scale * (1 - t.view(-1, 1, 1, 1))


POSITIVE, NEGATIVE = [torch.full((3, 8), 0.5)], [torch.full((3, 8), -0.25)]


def test_cfg1_runs_only_the_positive_and_its_estimate_is_the_uncond_one() -> None:
    model = CaptionScale()
    denoiser = ZImageDenoiser(model, POSITIVE, NEGATIVE, 1.0)
    x, sigma = seeded_noise((2, 4, 4, 4), 1), torch.full((2,), 0.6)
    out = denoiser(x, sigma)
    assert model.rows == 2
    assert denoiser.uncond_denoised is out
    torch.testing.assert_close(out, x + 0.6 * (x * 0.5 * 0.6))


def test_uncond_at_cfg1_also_runs_the_negative() -> None:
    model = CaptionScale()
    denoiser = ZImageDenoiser(model, POSITIVE, NEGATIVE, 1.0, uncond_at_cfg1=True)
    x, sigma = seeded_noise((2, 4, 4, 4), 1), torch.full((2,), 0.6)
    out = denoiser(x, sigma)
    assert model.rows == 4
    torch.testing.assert_close(out, x + 0.6 * (x * 0.5 * 0.6))
    assert denoiser.uncond_denoised is not None
    torch.testing.assert_close(denoiser.uncond_denoised, x + 0.6 * (x * -0.25 * 0.6))


def test_cfg_combines_and_keeps_the_negative_estimate() -> None:
    denoiser = ZImageDenoiser(CaptionScale(), POSITIVE, NEGATIVE, 3.0)
    x, sigma = seeded_noise((1, 4, 4, 4), 2), torch.full((1,), 0.3)
    pos, neg = x * 0.5 * 0.3, x * -0.25 * 0.3
    out = denoiser(x, sigma)
    torch.testing.assert_close(out, x + 0.3 * (neg + 3.0 * (pos - neg)))
    assert denoiser.uncond_denoised is not None
    torch.testing.assert_close(denoiser.uncond_denoised, x + 0.3 * neg)


def test_a_cfg_pp_sampler_uses_the_negative_at_cfg1() -> None:
    """euler_cfg_pp steps along the unconditional estimate: with the negative it differs from euler."""
    x, sigmas = seeded_noise((1, 4, 4, 4), 3), get_sigmas("simple", 4)
    plain = SAMPLERS["euler_cfg_pp"](ZImageDenoiser(CaptionScale(), POSITIVE, NEGATIVE, 1.0), x, sigmas)
    guided = ZImageDenoiser(CaptionScale(), POSITIVE, NEGATIVE, 1.0, uncond_at_cfg1=True)
    with_negative = SAMPLERS["euler_cfg_pp"](guided, x, sigmas)
    torch.testing.assert_close(
        plain, SAMPLERS["euler"](ZImageDenoiser(CaptionScale(), POSITIVE, None, 1.0), x, sigmas)
    )
    assert not torch.allclose(plain, with_negative)
