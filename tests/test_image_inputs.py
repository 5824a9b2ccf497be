"""Bad image inputs get clear errors naming the input, before any model work: a file that is not an image,
a decompression bomb (a valid 20000×20000 PNG of 400 MB decoded, ~0.4 MB on disk), a mask of another size."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zturbo import masks
from zturbo.cli import app
from zturbo.errors import InputError
from zturbo.images import MAX_IMAGE_PIXELS, image_size, load_image, load_mask, open_image

runner = CliRunner()


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A complete, valid greyscale PNG of side×side zero pixels, written without decoding it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    rows = bytes(side + 1) * 500  # filter byte 0 + a row of zeros, 500 rows at a time
    idat = b"".join(packer.compress(rows) for _ in range(side // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return bomb_png(tmp_path_factory.mktemp("bomb") / "huge.png")


def test_the_bomb_is_refused_before_decoding(bomb):
    assert bomb.stat().st_size < 2_000_000
    for read in (load_image, load_mask, image_size):
        with pytest.raises(InputError, match=r"huge\.png: .*(20000×20000|decompression bomb)"):
            read(bomb)
    with pytest.raises(InputError, match="uploaded.png"), open_image(bomb.read_bytes(), "uploaded.png"):
        pass


def test_the_cap_allows_big_images_below_it(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5)
    assert side == 8192
    path = bomb_png(tmp_path / "8k.png", side)
    assert image_size(path) == (8192, 8192)


def test_not_an_image(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("just text, not a picture")
    with pytest.raises(InputError, match=r"notes\.png: not an image that can be read"):
        load_image(fake)
    with pytest.raises(InputError, match=r"missing\.png: no such file"):
        load_image(tmp_path / "missing.png")


def test_a_mask_of_another_size():
    with pytest.raises(InputError, match=r"--mask m\.png is 32×16 pixels but the image is 64×48"):
        masks.check_size(torch.zeros(1, 16, 32), torch.zeros(1, 48, 64, 3), "--mask m.png")


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "{small}"], "--mask {small} is 32×16 pixels but the image is 64×48"),
        (["--mask", "alpha"], "has no alpha channel"),
        (["--mask", "{bomb}"], "decompression bomb"),
    ],
)
def test_cli_errors_name_the_input(tiny_models, picture, bomb, tmp_path, extra, message):
    small = tmp_path / "small-mask.png"
    Image.new("L", (32, 16), 255).save(small)
    names = {"small": small, "bomb": bomb}
    args = ["generate", "x", "--image", str(picture), "--models-dir", str(tiny_models), "--device", "cpu"]
    result = runner.invoke(app, args + [a.format(**names) for a in extra])
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError) or "error" in result.output
    assert message.format(**names) in str(result.exception or result.output)


def test_cli_refuses_a_non_image_init(tiny_models, tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_bytes(b"\xff\xd8 not really a jpeg")
    result = runner.invoke(app, ["generate", "x", "--image", str(fake), "--models-dir", str(tiny_models)])
    assert result.exit_code != 0
    assert "photo.jpg: not an image that can be read" in str(result.exception)


def test_a_mask_the_graph_would_stretch_is_refused():
    """Graph nodes resize masks to their images as ComfyUI does: a smaller or latent-sized mask of the
    image's shape, or one of the uncropped image (VAEEncode crops to multiples of 8), passes; another
    aspect ratio would be stretched over the picture and is refused."""
    for mask_w, mask_h, width, height in (
        (512, 384, 1024, 768),
        (128, 96, 1024, 768),
        (1000, 750, 1000, 744),
    ):
        masks.check_shape(torch.zeros(1, mask_h, mask_w), width, height, "mask", "the image")
    for mask_w, mask_h, width, height in ((32, 16, 64, 48), (768, 768, 1024, 768), (1024, 768, 768, 1024)):
        with pytest.raises(InputError, match=rf"mask is {mask_w}×{mask_h} but the image is {width}×{height}"):
            masks.check_shape(torch.zeros(1, mask_h, mask_w), width, height, "mask", "the image")
