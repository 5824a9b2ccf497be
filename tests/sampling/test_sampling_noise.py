"""Seeded noise: ComfyUI's starting noise, the samplers' noise, and the global RNG left alone."""

from __future__ import annotations

import pytest
import torch

from zturbo.errors import InputError
from zturbo.sampling.noise import BrownianTreeNoiseSampler, default_noise_sampler, seeded_noise


def global_randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """ComfyUI's prepare_noise as written, inside fork_rng so this test leaves no trace either."""
    with torch.random.fork_rng(devices=[]):
        return torch.randn(shape, generator=torch.manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seed", [0, 42, 2**63 + 5])
def test_seeded_noise_equals_comfyui_prepare_noise(batch: int, seed: int) -> None:
    shape = (batch, 16, 8, 6)
    noise = seeded_noise(shape, seed)
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert torch.equal(noise, global_randn(shape, seed))


def test_seeded_noise_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    seeded_noise((2, 4, 8, 8), 1234)
    assert torch.equal(torch.get_rng_state(), state)


def test_seeded_noise_is_drawn_in_float32_then_cast() -> None:
    shape = (1, 4, 4, 4)
    assert torch.equal(
        seeded_noise(shape, 7, dtype=torch.bfloat16), seeded_noise(shape, 7).to(torch.bfloat16)
    )


@pytest.mark.parametrize("seed", [-1, 2**64, True, 1.5])
def test_bad_seed_is_an_input_error(seed: object) -> None:
    with pytest.raises(InputError):
        seeded_noise((1, 2), seed)  # type: ignore[arg-type]


def test_default_noise_sampler_is_comfyuis_cpu_stream_seed_plus_one() -> None:
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    state = torch.get_rng_state()
    draw = default_noise_sampler(x, seed=10)
    first, second = draw(torch.tensor(1.0), torch.tensor(0.5)), draw(torch.tensor(0.5), torch.tensor(0.2))
    assert torch.equal(torch.get_rng_state(), state)
    generator = torch.Generator().manual_seed(11)
    want = [torch.randn(x.shape, generator=generator) for _ in range(2)]
    assert first.dtype == torch.float64
    assert torch.equal(first, want[0].double()) and torch.equal(second, want[1].double())


def test_default_noise_sampler_wraps_the_largest_seed() -> None:
    draw = default_noise_sampler(torch.zeros(1, 4), seed=2**64 - 1)
    assert torch.equal(draw(torch.tensor(1.0), torch.tensor(0.5)), global_randn((1, 4), 0))


def brownian(seed: int, x: torch.Tensor | None = None) -> BrownianTreeNoiseSampler:
    pytest.importorskip("torchsde")
    x = torch.zeros(1, 4, 32, 32) if x is None else x
    return BrownianTreeNoiseSampler(x, torch.tensor(0.01), torch.tensor(1.0), seed)


def test_brownian_noise_is_reproducible_and_seed_dependent() -> None:
    s0, s1 = torch.tensor(0.9), torch.tensor(0.6)
    assert torch.equal(brownian(3)(s0, s1), brownian(3)(s0, s1))
    assert not torch.equal(brownian(3)(s0, s1), brownian(4)(s0, s1))


def test_brownian_noise_has_unit_variance() -> None:
    noise = brownian(5)(torch.tensor(0.8), torch.tensor(0.5))
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05


def test_brownian_increments_add_up() -> None:
    """The scaled noises of σ0→σ1 and σ1→σ2 are increments of one path: they sum to σ0→σ2's."""
    sigmas = [torch.tensor(v) for v in (0.9, 0.7, 0.4)]
    tree = brownian(9)

    def increment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return tree(a, b) * (a - b).abs().sqrt()

    total = increment(sigmas[0], sigmas[2])
    parts = increment(sigmas[0], sigmas[1]) + increment(sigmas[1], sigmas[2])
    torch.testing.assert_close(total, parts, rtol=0, atol=1e-5)


def test_brownian_noise_takes_xs_dtype_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    noise = brownian(1, torch.zeros(1, 2, 4, 4, dtype=torch.float64))(torch.tensor(0.9), torch.tensor(0.5))
    assert noise.dtype == torch.float64 and noise.shape == (1, 2, 4, 4)
    assert torch.equal(torch.get_rng_state(), state)
