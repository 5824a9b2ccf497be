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
