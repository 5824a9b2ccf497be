"""`zturbo doctor`: torch, the device, the models folder and a full self-test generate on a tiny
random-weight model, on a CPU-only machine (issue 12, defect 6)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from typer.testing import CliRunner

import zturbo.testing.synthetic
from zturbo.cli import app
from zturbo.doctor import SELF_TEST_LABEL
from zturbo.output.png import read_png_text

runner = CliRunner()


def test_doctor_self_test_on_the_cpu(tiny_models, tmp_path, monkeypatch):
    written = []

    def write_tiny(folder: Path, config, dtype=torch.float32):  # the session's copy: same writer, once
        assert config is zturbo.testing.synthetic.TINY
        written.append(folder)
        shutil.copytree(tiny_models, folder)

    monkeypatch.setattr(zturbo.testing.synthetic, "write_comfy_models", write_tiny)
    result = runner.invoke(app, ["doctor", "--models-dir", str(tmp_path / "none"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].startswith("[ok] torch ") and lines[2].startswith("[ok] device cpu")
    assert lines[3].startswith("[--] models folder") and "zturbo models pull" in lines[4]
    assert lines[5].startswith("[ok] self-test: a full generate on a tiny random-weight model took")
    label, image = lines[6].strip().rsplit(": ", 1)
    assert label == SELF_TEST_LABEL == "self-test image (random weights: noise, not a picture)"
    assert (
        Path(image).parent.name.startswith("zturbo-selftest-")
        and "Version: zturbo" in read_png_text(image)["parameters"]
    )
    assert not written[0].exists()  # the tiny models are removed, the image is kept
    shutil.rmtree(Path(image).parent)


def test_doctor_fails_on_a_device_that_is_not_there(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["doctor", "--models-dir", str(tmp_path), "--device", "cuda"])
    assert result.exit_code == 1
    assert "[!!] device cuda: --device cuda was asked for, but PyTorch sees no CUDA GPU" in result.stdout
