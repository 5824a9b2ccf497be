"""`zturbo models` and the file `generate` picks: the default is marked, another is chosen by name,
missing or unusable files give exit code 1 and the reason (issue 12, defect 5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from zturbo.checkpoints.detect import DIT, VAE
from zturbo.checkpoints.layout import COMFY_FILES, resolve_models
from zturbo.cli import app
from zturbo.errors import MissingModelError, ModelFileError, ZTurboError

runner = CliRunner()


@pytest.fixture
def two_dits(tiny_models: Path, tmp_path: Path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / "unet" / "more").mkdir(parents=True)
    shutil.copy(models / COMFY_FILES[DIT], models / "unet" / "more" / "other.safetensors")
    return models


def only_pickle_dit(tiny_models: Path, tmp_path: Path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / COMFY_FILES[DIT]).unlink()
    (models / "diffusion_models" / "z_image_turbo.ckpt").write_bytes(b"PK\x03\x04 a torch.save zip")
    return models


def test_models_marks_what_generate_uses(two_dits):
    result = runner.invoke(app, ["models", "--models-dir", str(two_dits)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    chosen = [line for line in lines if "<- generate uses this" in line]
    assert len(chosen) == 3  # one per component
    assert chosen[0].startswith("  [ok] diffusion_models/z_image_turbo_bf16.safetensors:")
    assert chosen[0].endswith("<- generate uses this (another: --dit NAME)")
    assert "another" not in chosen[1] + chosen[2]  # a single file: nothing to choose


def test_generate_takes_another_dit_by_name(two_dits, tmp_path):
    paths = resolve_models(two_dits, names={DIT: "more/other.safetensors"})
    assert paths.dit == two_dits / "unet" / "more" / "other.safetensors"
    args = ["generate", "cat", "--width", "32", "--height", "32", "--steps", "1", "--device", "cpu"]
    args += ["--models-dir", str(two_dits), "--out", str(tmp_path / "out"), "--dit", "more/other.safetensors"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (png,) = [line for line in result.stdout.split() if line.endswith(".png")]
    with Image.open(png) as img:
        assert "Model: more/other.safetensors" in img.info["parameters"]


def test_a_wrong_name_lists_the_choices(two_dits):
    with pytest.raises(
        MissingModelError, match=r"'nope' is not in .*: more/other.safetensors, z_image_turbo"
    ):
        resolve_models(two_dits, names={DIT: "nope"})
    with pytest.raises(ModelFileError, match="holds a Z-Image diffusion model, not a Flux VAE"):
        shutil.copy(two_dits / COMFY_FILES[DIT], two_dits / "vae" / "dit.safetensors")
        resolve_models(two_dits, names={VAE: "dit.safetensors"})


def test_models_exits_1_when_files_are_missing_or_unusable(tiny_models, tmp_path):
    assert runner.invoke(app, ["models", "--models-dir", str(tmp_path / "empty")]).exit_code == 1
    models = only_pickle_dit(tiny_models, tmp_path)
    result = runner.invoke(app, ["models", "--models-dir", str(models)])
    assert result.exit_code == 1
    assert "[!!] diffusion_models/z_image_turbo.ckpt: unusable: is a pickle-based file" in result.stdout


def test_generate_with_only_a_pickle_explains_why(tiny_models, tmp_path):
    models = only_pickle_dit(tiny_models, tmp_path)
    result = runner.invoke(
        app, ["generate", "cat", "--models-dir", str(models), "--out", str(tmp_path / "o")]
    )
    assert isinstance(result.exception, ZTurboError)
    message = str(result.exception)
    assert "Z-Image diffusion model: put it at" in message
    assert "(z_image_turbo.ckpt cannot be used: is a pickle-based file. zturbo never loads pickle" in message
