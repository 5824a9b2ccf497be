"""`zturbo.sampling.sample`: ComfyUI's flow noise scaling around the chosen sampler."""

from __future__ import annotations

import pytest
import torch

from zturbo.errors import InputError
from zturbo.sampling import SAMPLERS, get_sigmas, sample, seeded_noise


class Recorder:
    """A denoiser that remembers its inputs and predicts 0.25·x."""

    def __init__(self) -> None:
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.inputs.append((x, sigma))
        return 0.25 * x


def test_text_to_image_starts_from_the_noise() -> None:
    noise = seeded_noise((1, 4, 8, 8), 5)
    model = Recorder()
    sample("euler", model, noise, torch.zeros_like(noise), get_sigmas("simple", 4), seed=5)
    assert torch.equal(model.inputs[0][0], noise)
    assert len(model.inputs) == 4


def test_img2img_starts_from_the_flow_interpolation() -> None:
    noise, latent = seeded_noise((2, 4, 8, 8), 1), seeded_noise((2, 4, 8, 8), 2)
    sigmas = get_sigmas("simple", 4, denoise=0.5)
    model = Recorder()
    sample("res_multistep", model, noise, latent, sigmas, seed=1)
    sigma0 = float(sigmas[0])
    torch.testing.assert_close(model.inputs[0][0], sigma0 * noise + (1 - sigma0) * latent)


def test_result_equals_the_sampler_on_the_scaled_start() -> None:
    noise = seeded_noise((1, 4, 8, 8), 9)
    sigmas = get_sigmas("simple", 6)
    got = sample("dpmpp_2m", Recorder(), noise, torch.zeros_like(noise), sigmas, seed=0)
    assert torch.equal(got, SAMPLERS["dpmpp_2m"](Recorder(), noise, sigmas))


def test_seed_reaches_the_sampler() -> None:
    noise = seeded_noise((1, 4, 8, 8), 9)
    sigmas, zeros = get_sigmas("simple", 6), torch.zeros_like(noise)
    a = sample("euler_ancestral", Recorder(), noise, zeros, sigmas, seed=1)
    b = sample("euler_ancestral", Recorder(), noise, zeros, sigmas, seed=2)
    assert not torch.equal(a, b)


def test_empty_sigmas_return_the_latent() -> None:
    latent = seeded_noise((1, 4, 8, 8), 2)
    model = Recorder()
    out = sample(
        "euler", model, seeded_noise((1, 4, 8, 8), 1), latent, get_sigmas("simple", 4, denoise=0), seed=0
    )
    assert out is latent and not model.inputs


def test_works_in_float32_whatever_the_input_dtype() -> None:
    noise = seeded_noise((1, 4, 8, 8), 3, dtype=torch.bfloat16)
    out = sample("euler", Recorder(), noise, torch.zeros_like(noise), get_sigmas("simple", 3), seed=0)
    assert out.dtype == torch.float32


def test_mismatched_shapes_and_unknown_sampler_are_input_errors() -> None:
    noise = seeded_noise((1, 4, 8, 8), 3)
    with pytest.raises(InputError):
        sample("euler", Recorder(), noise, torch.zeros(1, 4, 8, 9), get_sigmas("simple", 3), seed=0)
    with pytest.raises(InputError, match="res_multistep"):
        sample("nope", Recorder(), noise, torch.zeros_like(noise), get_sigmas("simple", 3), seed=0)
