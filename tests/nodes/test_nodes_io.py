"""SaveImage / SaveImageAdvanced / PreviewImage / LoadImage: naming, chunks, atomicity, path safety."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from zturbo.errors import InputError
from zturbo.nodes.io import LoadImage, PreviewImage, SaveImage, SaveImageAdvanced
from zturbo.output.naming import save_target, substitute_tokens


def images(batch=1, height=6, width=10):
    return torch.linspace(-0.2, 1.2, batch * height * width * 3).reshape(batch, height, width, 3)


def save(node_ctx, prefix, batch=1):
    return SaveImage().execute(node_ctx, images(batch), prefix).ui["images"]


def test_names_counter_and_ui(node_ctx, context):
    assert save(node_ctx, "shot", batch=2) == [
        {"filename": "shot_00001_.png", "subfolder": "", "type": "output"},
        {"filename": "shot_00002_.png", "subfolder": "", "type": "output"},
    ]
    (context.output_dir / "shot_00041_.png").write_bytes(b"")  # counter = 1 + highest, gaps kept
    (context.output_dir / "shotx_00099_.png").write_bytes(b"")  # another prefix: ignored
    assert save(node_ctx, "shot")[0]["filename"] == "shot_00042_.png"


def test_subfolders_and_tokens(node_ctx, context):
    result = save(node_ctx, "z/turbo/%width%x%height%_%year%")
    year = time.localtime().tm_year
    assert result == [{"filename": f"10x6_{year}_00001_.png", "subfolder": "z/turbo", "type": "output"}]
    assert (context.output_dir / "z" / "turbo" / result[0]["filename"]).is_file()


def test_date_tokens():
    now = time.struct_time((2024, 3, 7, 9, 5, 2, 0, 0, -1))
    assert substitute_tokens("%date:yyyy-MM-dd%/x_%date:hhmmss%", 1, 1, now) == "2024-03-07/x_090502"
    assert substitute_tokens("%date:yy-M-d h:m:s%", 1, 1, now) == "24-3-7 9:5:2"


def test_pixels_and_chunks(node_ctx, context):
    batch = images()
    name = save(node_ctx, "px")[0]["filename"]
    with Image.open(context.output_dir / name) as img:
        expected = np.clip(255.0 * batch[0].numpy(), 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(img), expected)
        assert json.loads(img.text["prompt"]) == node_ctx.prompt
        assert json.loads(img.text["workflow"]) == {"nodes": []}


def test_writes_are_atomic(node_ctx, context, monkeypatch):
    def failing_replace(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("zturbo.output.png.os.replace", failing_replace)  # the temp file is written
    with pytest.raises(OSError, match="disk full"):
        save(node_ctx, "broken")
    assert list(context.output_dir.iterdir()) == []  # no partial file, no temp left behind


@pytest.mark.parametrize(
    "prefix", ["../escape", "a/../../escape", "/etc/passwd", "C:/x", "a\\..\\..\\b", "nul\x00"]
)
def test_prefixes_leaving_the_output_folder_are_refused(node_ctx, context, prefix):
    with pytest.raises(InputError):
        save(node_ctx, prefix)
    assert not (context.output_dir.parent / "escape_00001_.png").exists()


def test_symlink_escape_is_refused(node_ctx, context, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, context.output_dir / "link")
    with pytest.raises(InputError, match="outside"):
        save(node_ctx, "link/pwned")
    assert list(outside.iterdir()) == []


def test_save_target_never_overwrites(context):
    target = save_target(context.output_dir, "a", 1, 1)
    assert target.counter == 1 and target.subfolder == ""


def test_preview_goes_to_temp(node_ctx, context):
    result = PreviewImage().execute(node_ctx, images()).ui["images"]
    assert result[0]["type"] == "temp" and result[0]["filename"].startswith("ComfyUI_temp_")
    assert (context.temp_dir / result[0]["filename"]).is_file()


@pytest.mark.parametrize(("depth", "mode"), [("8-bit", "RGB"), ("16-bit", None)])
def test_save_image_advanced_png(node_ctx, context, depth, mode):
    out = SaveImageAdvanced().execute(
        node_ctx, images(), "adv/run", {"format": "png", "bit_depth": depth, "input_color_space": "sRGB"}
    )
    assert out.ui == {"images": [{"filename": "run_00001.png", "subfolder": "adv", "type": "output"}]}
    assert torch.equal(out.values[0], images())
    with Image.open(context.output_dir / "adv" / "run_00001.png") as img:
        assert img.size == (10, 6) and json.loads(img.text["prompt"]) == node_ctx.prompt
        if mode:
            assert img.mode == mode
    again = SaveImageAdvanced().execute(node_ctx, images(), "adv/run", {"format": "png", "bit_depth": depth})
    assert again.ui["images"][0]["filename"] == "run_00002.png"


def test_load_image_rgba_gives_mask(node_ctx, context):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 64
    Image.fromarray(rgba, "RGBA").save(context.input_dir / "a.png")
    image, mask = LoadImage().execute(node_ctx, "a.png")
    assert image.shape == (1, 4, 5, 3) and mask.shape == (1, 4, 5)
    assert torch.allclose(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(mask, torch.full((1, 4, 5), 1 - 64 / 255))


def test_load_image_rgb_has_empty_mask_and_subfolder_names_work(node_ctx, context):
    (context.input_dir / "sub").mkdir()
    Image.new("RGB", (3, 2), "white").save(context.input_dir / "sub" / "b.png")
    image, mask = LoadImage().execute(node_ctx, "sub/b.png")
    assert image.shape == (1, 2, 3, 3) and torch.equal(mask, torch.zeros(1, 64, 64))
    Image.new("RGB", (3, 2), "white").save(context.output_dir / "c.png")
    assert LoadImage().execute(node_ctx, "c.png [output]")[0].shape == (1, 2, 3, 3)


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "link/x.png"])
def test_load_image_stays_in_the_input_folder(node_ctx, context, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (2, 2)).save(outside / "x.png")
    os.symlink(outside, context.input_dir / "link")
    with pytest.raises(InputError):
        LoadImage().execute(node_ctx, name)
    assert LoadImage.validate_inputs(context, name) is not True


def test_load_image_hooks(context):
    Image.new("RGB", (2, 2), "red").save(context.input_dir / "h.png")
    first = LoadImage.is_changed(context, image="h.png")
    assert LoadImage.validate_inputs(context, "h.png") is True
    assert LoadImage.validate_inputs(context, "nope.png") == "Invalid image file: nope.png"
    Image.new("RGB", (2, 2), "blue").save(context.input_dir / "h.png")
    assert LoadImage.is_changed(context, image="h.png") != first
