"""Canny as ComfyUI's node computes it (kornia's `filters.canny`), and the tile map.

Against kornia itself where it is installed (it is not a zturbo dependency: `pip install kornia`): the
edge maps must be identical (measured: identical on smooth random images at ComfyUI's default and the
template's thresholds).
"""

from __future__ import annotations

import pytest
import torch

from zturbo.errors import InputError
from zturbo.preprocess import prepare_control
from zturbo.preprocess.canny import canny, canny_image
from zturbo.preprocess.tile import tile_image


def smooth_image(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(2, 3, 24, 32, generator=gen)
    return torch.nn.functional.interpolate(small, size=(96, 128), mode="bicubic").clamp(0, 1)


@pytest.mark.parametrize(("low", "high"), [(0.4, 0.8), (0.1, 0.32), (0.05, 0.1)])
def test_equals_kornia(low, high):
    kornia = pytest.importorskip("kornia")
    image = smooth_image()
    expected = kornia.filters.canny(image, low, high)[1]
    assert torch.equal(canny(image, low, high), expected)


def shapes_image() -> torch.Tensor:
    """Overlapping filled shapes on a ramp: long, touching edges, so hysteresis has far to grow
    (kornia's loop needs hundreds of passes here; our single labelling pass must reach the same set)."""
    y, x = torch.meshgrid(torch.arange(192.0), torch.arange(256.0), indexing="ij")
    image = (x / 256).expand(3, -1, -1).clone()
    for cy, cx, r, value in ((60, 70, 45, 0.9), (110, 150, 60, 0.2), (140, 60, 35, 0.55)):
        image[:, (y - cy) ** 2 + (x - cx) ** 2 < r**2] = value
    image[1, 20:170, 200:240] = 0.05
    return image[None]


@pytest.mark.parametrize(("low", "high"), [(0.4, 0.8), (0.05, 0.3)])
def test_long_edges_equal_kornia(low, high):
    kornia = pytest.importorskip("kornia")
    image = shapes_image()
    expected = kornia.filters.canny(image, low, high)[1]
    assert expected.sum() > 500  # long outlines, not a few pixels
    assert torch.equal(canny(image, low, high), expected)


def test_a_square_has_its_outline():
    image = torch.zeros(1, 32, 32, 3)
    image[:, 8:24, 8:24] = 1.0
    edges = canny_image(image)
    assert edges.shape == (1, 32, 32, 3) and set(edges.unique().tolist()) == {0.0, 1.0}
    assert edges[0, 16, 7:9, 0].max() == 1 and edges[0, 16, 16, 0] == 0 and edges[0, 2, 2, 0] == 0


def test_thresholds_and_types_are_checked():
    with pytest.raises(InputError, match="low <= high"):
        canny(torch.zeros(1, 3, 8, 8), 0.8, 0.4)
    with pytest.raises(InputError, match="control type"):
        prepare_control(torch.zeros(1, 8, 8, 3), "normal")


def test_tile_keeps_the_layout_not_the_detail():
    image = smooth_image().movedim(1, -1)
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(1)) - 0.5
    noisy = (image + 0.3 * noise).clamp(0, 1)
    tile = tile_image(noisy, 4.0)
    assert tile.shape == noisy.shape
    assert (tile - image).abs().mean() < (noisy - image).abs().mean()
    assert torch.equal(prepare_control(noisy, "depth"), noisy)  # given maps pass through
