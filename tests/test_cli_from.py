"""`zturbo generate --from`: a batch image reproduces itself, and so does its reproduction; options given
with --from override the PNG's settings, and say so (issue 12, defect 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from zturbo.cli import app
from zturbo.output.png import read_png_text

runner = CliRunner()


def generate(*args: str) -> tuple[list[Path], str]:
    result = runner.invoke(app, ["generate", *args, "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [Path(line) for line in result.stdout.split() if line.endswith(".png")], result.stderr


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_reproducing_a_reproduction_of_a_batch_image(tiny_models, tmp_path):
    folders = ("--models-dir", str(tiny_models), "--out", str(tmp_path))
    (_, second), _ = generate(
        "a fox", "--width", "32", "--height", "32", "--steps", "2", "--batch", "2", *folders
    )
    (again,), _ = generate("--from", str(second), *folders)
    assert "Batch size: 2, Batch pos: 1" in read_png_text(again)["parameters"]
    (third,), _ = generate("--from", str(again), *folders)
    assert np.array_equal(pixels(third), pixels(second)) and np.array_equal(pixels(again), pixels(second))


def test_options_given_with_from_override_and_are_stated(tiny_models, tmp_path):
    folders = ("--models-dir", str(tiny_models), "--out", str(tmp_path))
    (first,), _ = generate(
        "a fox", "--width", "32", "--height", "32", "--steps", "2", "--seed", "5", *folders
    )
    (changed,), said = generate("--from", str(first), "--seed", "6", "--steps", "3", "a wolf", *folders)
    params = read_png_text(changed)["parameters"]
    assert params.startswith("a wolf\n") and "Seed: 6" in params and "Steps: 3" in params
    assert "Size: 32x32" in params  # what was not given comes from the PNG
    assert f"--from {first}: overriding" in said and "seed 5 -> 6" in said and "steps 2 -> 3" in said
    assert not np.array_equal(pixels(changed), pixels(first))
    batch, _ = generate("--from", str(first), "--batch", "2", *folders)  # a new batch keeps every image
    assert len(batch) == 2 and np.array_equal(pixels(batch[0]), pixels(first))
