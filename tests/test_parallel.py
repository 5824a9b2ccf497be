"""`zturbo generate --gpus 2 --device cpu`: one spawned follower (gloo), the same PNG as one process.

fp32 tiny models: the split forward differs from the single one only in the GEMMs' row counts (see
tests/models/test_context_parallel.py), ≤ 1e-5 relative on the DiT output, far below the half
step of 8-bit pixels after the VAE, so the PNGs' pixels must be equal.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from zturbo.cli import app
from zturbo.errors import InputError


def generate(models, out, *extra: str) -> np.ndarray:
    args = ["generate", "一只猫", "--width", "48", "--height", "32", "--steps", "8", "--seed", "7"]
    args += ["--models-dir", str(models), "--out", str(out), "--device", "cpu", *extra]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (png,) = out.glob("*.png")
    return np.asarray(Image.open(png))


def test_generate_on_two_processes_matches_one(tiny_models_fp32, tmp_path):
    one = generate(tiny_models_fp32, tmp_path / "one")
    two = generate(tiny_models_fp32, tmp_path / "two", "--gpus", "2")
    assert one.std() > 0 and np.array_equal(one, two)


def test_gpus_refuses_what_it_cannot_split_in_one_line(tiny_models_fp32, tmp_path):
    args = ["generate", "x", "--models-dir", str(tiny_models_fp32), "--out", str(tmp_path), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--gpus", "2", "--step-cache", "0.1"])
    assert isinstance(result.exception, InputError)  # main() prints it as one line (tests/test_cli_errors.py)
    assert "--step-cache" in str(result.exception) and "\n" not in str(result.exception)
    assert not list(tmp_path.glob("*.png"))
