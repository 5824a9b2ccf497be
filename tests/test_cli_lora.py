"""`zturbo generate --lora`: FILE[:STRENGTH] parsing (Windows paths too), names resolved in
models/loras, the load report and every unmatched key on the CLI, bad files named before any model
loads, the LoRAs (with A1111's content hash) in the PNG, and `--from` reapplying them."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zturbo.cli import app
from zturbo.errors import InputError, ZTurboError
from zturbo.output.png import read_png_text
from zturbo.request import LoraChoice
from zturbo.testing.lora_files import (
    block_modules,
    dit_shapes,
    random_factors,
    text_encoder_shapes,
    write_lora,
)

runner = CliRunner()
BOGUS = "transformer.layers.0.attention.bogus.lora_A.weight"


@pytest.mark.parametrize(
    "text, want",
    [
        ("a.safetensors", ("a.safetensors", 1.0, None)),
        ("a.safetensors:0.8", ("a.safetensors", 0.8, None)),
        ("a:-0.5", ("a", -0.5, None)),
        (r"C:\x\a.safetensors:0.8", (r"C:\x\a.safetensors", 0.8, None)),
        (r"C:\x\a.safetensors", (r"C:\x\a.safetensors", 1.0, None)),
        ("style/a.safetensors:1:0.25", ("style/a.safetensors", 1.0, 0.25)),
        ("a:1e-1", ("a", 0.1, None)),
    ],
)
def test_lora_argument_takes_strengths_only_from_trailing_numbers(text, want):
    choice = LoraChoice.parse(text)
    assert (choice.name, choice.strength, choice.clip_strength) == want


def test_lora_argument_without_a_file_is_refused():
    with pytest.raises(InputError, match="expected FILE"):
        LoraChoice.parse(":0.5")


@pytest.fixture(scope="module")
def models_with_lora(tiny_models, tmp_path_factory) -> Path:
    """The tiny models plus models/loras/style.safetensors (a rank-2 LoRA with one key that fits nothing)."""
    root = tmp_path_factory.mktemp("lora_models")
    for sub in tiny_models.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            shutil.copytree(sub, root / sub.name)
    factors = random_factors(dit_shapes(), block_modules(), rank=2, alpha=2.0, seed=7)
    factors = {k: type(f)(f.up * 4, f.down * 4, f.alpha) for k, f in factors.items()}  # visible on 2 steps
    write_lora(root / "loras" / "style.safetensors", factors, "diffusers", extra={BOGUS: torch.zeros(2, 4)})
    return root


def generate(*args: str):
    result = runner.invoke(app, ["generate", *args, "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [Path(line) for line in result.stdout.split() if line.endswith(".png")], result.output


def error_of(*args: str) -> str:
    """The one line `zturbo` prints for a ZTurboError (anything else would be a traceback)."""
    result = runner.invoke(app, ["generate", *args, "--device", "cpu"])
    assert isinstance(result.exception, ZTurboError), (result.exception, result.output)
    assert "\n" not in str(result.exception)
    return str(result.exception)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).astype(np.int16)


def content_hash(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()[:12]


def test_lora_by_name_reports_records_and_reapplies(models_with_lora, tmp_path):
    folders = ("--models-dir", str(models_with_lora), "--out", str(tmp_path))
    base = ("a fox", "--width", "32", "--height", "32", "--steps", "2", "--seed", "3", *folders)
    (plain,), _ = generate(*base)
    (styled,), said = generate(*base, "--lora", "style:0.9")
    assert "style.safetensors: diffusers/PEFT" in said and "rank: 2" in said and "alpha: 2" in said
    assert "keys: 28 of 29 used" in said
    assert "warning:" in said and f"1 keys matched nothing and are not applied: {BOGUS}" in said
    assert np.abs(pixels(styled) - pixels(plain)).max() > 0
    params = read_png_text(styled)["parameters"]
    digest = content_hash(models_with_lora / "loras" / "style.safetensors")
    assert 'LoRAs: "style.safetensors:0.9"' in params and f'Lora hashes: "style: {digest}"' in params
    prompt = read_png_text(styled)["prompt"]
    assert '"class_type": "LoraLoader"' in prompt and '"strength_model": 0.9' in prompt

    (again,), _ = generate("--from", str(styled), *folders)
    assert np.array_equal(pixels(again), pixels(styled))
    (negated,), _ = generate("--from", str(styled), "--lora", "style.safetensors:-0.9", *folders)
    assert "style.safetensors:-0.9" in read_png_text(negated)["parameters"]
    assert not np.array_equal(pixels(negated), pixels(styled))


def test_from_a_png_whose_lora_is_missing_or_changed_is_one_clear_error(models_with_lora, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(models_with_lora, models)
    folders = ("--models-dir", str(models), "--out", str(tmp_path / "out"))
    (styled,), _ = generate(
        "a", "--width", "32", "--height", "32", "--steps", "1", "--lora", "style", *folders
    )
    lora = models / "loras" / "style.safetensors"
    factors = random_factors(dit_shapes(), block_modules(), rank=2, alpha=2.0, seed=8)
    write_lora(lora, factors, "diffusers")  # same name, other weights
    said = error_of("--from", str(styled), *folders)
    assert "LoRA 'style.safetensors' with hash" in said and "has hash" in said
    lora.unlink()
    said = error_of("--from", str(styled), *folders)
    assert "no such file" in said and "loras" in said


@pytest.mark.parametrize("kind", ["missing", "pickle", "corrupt"])
def test_bad_lora_file_is_one_line_before_any_model_loads(models_with_lora, tmp_path, kind, monkeypatch):
    path = tmp_path / "bad.safetensors"
    if kind == "pickle":
        path = tmp_path / "bad.pt"
        path.write_bytes(b"\x80\x04K\x01.")
    elif kind == "corrupt":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    from zturbo.engine import Engine

    monkeypatch.setattr(Engine, "load_all", lambda *a, **k: pytest.fail("a model was loaded"))
    said = error_of(
        "a", "--width", "32", "--height", "32", "--models-dir", str(models_with_lora),
        "--out", str(tmp_path / "out"), "--lora", f"{path}:0.5",
    )  # fmt: skip
    assert str(path) in said or "bad.safetensors" in said


def test_switch_template_with_lora_loader_runs_through_zturbo_run(models_with_lora, tmp_path):
    """The official `basic_switch_node.json` (LoraLoaderModelOnly) runs unmodified through `zturbo run`
    on tiny files named like the real ones; its LoRA's unmatched key is named in the log."""
    spec = importlib.util.find_spec("comfyui_workflow_templates_json")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui-workflow-templates-json is not installed (pip install -e '.[test]')")
    template = Path(next(iter(spec.submodule_search_locations))) / "templates" / "basic_switch_node.json"
    models = tmp_path / "models"
    shutil.copytree(models_with_lora, models)
    shutil.copy(
        models / "loras" / "style.safetensors", models / "loras" / "pixel_art_style_z_image_turbo.safetensors"
    )
    args = [
        "run",
        str(template),
        "--models-dir",
        str(models),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    result = runner.invoke(
        app,
        [
            *args,
            "--input-dir",
            str(tmp_path / "in"),
            "--set",
            "64:58.steps=1",
            "--set",
            "64:57.width=64",
            "--set",
            "64:57.height=64",
        ],
    )
    assert result.exit_code == 0, result.output
    (png,) = [Path(line) for line in result.stdout.split() if line.endswith(".png")]
    assert png.is_file() and "LoraLoaderModelOnly" in read_png_text(png)["prompt"]


def test_text_encoder_strength_of_file_model_clip(models_with_lora, tmp_path):
    """`FILE:MODEL:CLIP`: a text-encoder LoRA at model 1, clip 0 gives the plain image; at clip 1.5 it
    changes it (its strength reaches the encoder, as LoraLoader's strength_clip)."""
    models = tmp_path / "models"
    shutil.copytree(models_with_lora, models)
    shapes = text_encoder_shapes()
    modules = ["layers.0.self_attn.q_proj", "layers.0.mlp.up_proj"]
    te = {
        k: type(f)(f.up * 20, f.down * 20, f.alpha)
        for k, f in random_factors(shapes, modules, seed=5).items()
    }
    write_lora(models / "loras" / "te.safetensors", {}, text_encoder=te)
    folders = ("--models-dir", str(models), "--out", str(tmp_path / "out"))
    base = ("a fox", "--width", "32", "--height", "32", "--steps", "1", "--seed", "4", *folders)
    (plain,), _ = generate(*base)
    (off,), said = generate(*base, "--lora", "te:1:0")
    (on,), _ = generate(*base, "--lora", "te:1:1.5")
    assert "text encoder: 2 patches" in said
    assert np.array_equal(pixels(off), pixels(plain)) and not np.array_equal(pixels(on), pixels(plain))
    assert 'LoRAs: "te.safetensors:1:1.5"' in read_png_text(on)["parameters"]


def test_gpus_refuses_loras_before_anything_loads(models_with_lora, tmp_path):
    """The other processes of `--gpus` load the base DiT file: a LoRA would patch only rank 0's copy."""
    message = error_of("x", "--models-dir", str(models_with_lora), "--out", str(tmp_path), "--lora", "style",
                       "--gpus", "2")  # fmt: skip
    assert "--lora" in message and "context parallel" in message
    assert not list(tmp_path.glob("*.png"))
