"""Upscale models (spandrel, safe file reading, tiling) and the official 2K upscaler template.

Tiling tolerance: a tile's output counts only from overlap/4 inside its inner edges (models/upscale.py),
so a model whose receptive field reaches r ≤ overlap/4 input pixels gives the untiled result up to float
rounding; bound here: max abs error ≤ 1e-5 on 0..1 pixels. The tiny ESRGAN (1 RRDB block: 17 convs at
input resolution, 4 more after the ×2 and ×4 upsamplings) reaches r = 17 + 1/2 + 3/4 ≈ 18.3 pixels, so
the test uses overlap 76 (overlap/4 = 19).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zturbo.cli import app
from zturbo.errors import ModelFileError
from zturbo.models.upscale import load_upscale_model, upscale_image, upscale_tiled
from zturbo.testing.upscale_files import write_compact, write_esrgan

runner = CliRunner()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def esrgan(tmp_path_factory) -> Path:
    return write_esrgan(tmp_path_factory.mktemp("up") / "RealESRGAN_x4plus.safetensors")


def test_esrgan_is_recognised_and_tiling_matches_untiled(esrgan):
    model = load_upscale_model(esrgan, CPU)
    assert (model.architecture, model.scale) == ("ESRGAN", 4)
    image = torch.rand(1, 88, 120, 3, generator=torch.Generator().manual_seed(0))
    whole = upscale_image(model, image, tile=512, overlap=0)
    assert whole.shape == (1, 352, 480, 3) and whole.std() > 0.05
    tiled = upscale_image(model, image, tile=96, overlap=76)  # 3 tiles across, the last flush
    assert (tiled - whole).abs().max() <= 1e-5


def test_tiler_blends_to_the_untiled_result():
    """A 3×3 conv then ×2 nearest (receptive field 1 pixel): exact with overlap 8, several rows and columns."""
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def fn(x):
        return torch.nn.functional.interpolate(conv(x), scale_factor=2, mode="nearest")

    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        assert (upscale_tiled(fn, x, 2, tile=24, overlap=8) - fn(x)).abs().max() <= 1e-5


def test_pth_is_read_only_through_weights_only(esrgan, tmp_path, monkeypatch):
    pth = write_esrgan(tmp_path / "x4.pth", fmt="pth")  # params_ema-wrapped, as Real-ESRGAN saves
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    image = torch.rand(1, 16, 16, 3)
    from_pth = upscale_image(load_upscale_model(pth, CPU), image)
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert torch.equal(from_pth, upscale_image(load_upscale_model(esrgan, CPU), image))


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"conv_first.weight": _Payload()}))
    with pytest.raises(ModelFileError, match="not a readable weights file"):
        load_upscale_model(bad, CPU)
    assert not (tmp_path / "pwned").exists()


def test_other_files_are_named_errors(tmp_path, tiny_models):
    with pytest.raises(ModelFileError, match="not an upscale model architecture"):
        load_upscale_model(tiny_models / "vae" / "ae.safetensors", CPU)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelFileError, match="junk.safetensors: not a readable weights file"):
        load_upscale_model(junk, CPU)


def test_upscale_command_with_a_model(tiny_models, esrgan, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / "upscale_models").mkdir(exist_ok=True)
    shutil.copy(esrgan, models / "upscale_models" / esrgan.name)
    picture = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(picture)
    result = runner.invoke(
        app,
        ["upscale", str(picture), "a test card", "--models-dir", str(models), "--out", str(tmp_path / "out"),
         "--device", "cpu", "--seed", "3", "--upscale-model", esrgan.name],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (written,) = [Path(p) for p in result.stdout.split() if p.endswith(".png")]
    with Image.open(written) as img:
        assert img.size == (96, 64)
        graph = json.loads(img.info["prompt"])
        assert "Hires upscaler: RealESRGAN_x4plus.safetensors" in img.info["parameters"]
    types = {n["class_type"] for n in graph.values()}
    assert {"LoadImage", "UpscaleModelLoader", "ImageUpscaleWithModel", "ImageScale", "KSampler"} <= types
    assert "EmptySD3LatentImage" not in types


# --- the official template: utility_z_image_turbo_2k_upscaler.app.json, unmodified ---


def upscaler_template() -> Path:
    spec = importlib.util.find_spec("comfyui_workflow_templates_json")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui-workflow-templates-json is not installed (pip install -e '.[test]')")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "templates" / "utility_z_image_turbo_2k_upscaler.app.json"


def upscaler_files(models: Path, input_dir: Path) -> None:
    """The template's files, tiny, under their real names: a Real-ESRGAN (Compact, cheap at 1 MP × 4) and
    fighter_jet.png (64×64: 1 MP, ×4, ×0.5 gives the template's 2048×2048)."""
    write_compact(models / "upscale_models" / "RealESRGAN_x4plus.safetensors")
    input_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(input_dir / "fighter_jet.png")


def test_2k_upscaler_template_runs_unmodified(tiny_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    upscaler_files(models, tmp_path / "input")
    result = runner.invoke(
        app,
        ["run", str(upscaler_template()), "--models-dir", str(models), "--out", str(tmp_path / "out"),
         "--input-dir", str(tmp_path / "input"), "--device", "cpu"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (written,) = [Path(p) for p in result.stdout.split() if p.endswith(".png")]
    assert written.name.startswith("z-image-upscaled_")
    with Image.open(written) as img:
        assert img.size == (2048, 2048)
        prompt = json.loads(img.info["prompt"])
    sampler = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler")
    assert (sampler["steps"], sampler["sampler_name"], sampler["denoise"]) == (5, "dpmpp_2m_sde", 0.33)
