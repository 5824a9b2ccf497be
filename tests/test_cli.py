"""`zturbo generate` and `zturbo models` end to end on a tiny models folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zturbo.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


def test_generate_writes_png_with_metadata_and_from_reproduces(tiny_models, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        "generate",
        "一只猫 in a hat",
        "--width",
        "48",
        "--height",
        "32",
        "--steps",
        "3",
        "--seed",
        "7",
        "--models-dir",
        str(tiny_models),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch",
        "2",
    )
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.split() if line.endswith(".png")]
    assert [p.name for p in paths] == ["zturbo_00001_.png", "zturbo_00002_.png"]
    with Image.open(paths[1]) as img:
        assert img.size == (48, 32)
        params, graph = img.info["parameters"], json.loads(img.info["prompt"])
        original = np.asarray(img)
    assert params.startswith("一只猫 in a hat\nNegative prompt: \n")
    assert (
        "Seed: 7" in params and "Batch pos: 1" in params and "Model: z_image_turbo_bf16.safetensors" in params
    )
    assert "Model hash: " in params
    assert graph["8"]["class_type"] == "KSampler" and graph["8"]["inputs"]["seed"] == 7
    assert graph["2"]["inputs"] == {
        "clip_name": "qwen_3_4b.safetensors",
        "type": "lumina2",
        "device": "default",
    }

    again = invoke(
        "generate",
        "--from",
        str(paths[1]),
        "--models-dir",
        str(tiny_models),
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert again.exit_code == 0, again.output
    (regenerated,) = [Path(line) for line in again.stdout.split() if line.endswith(".png")]
    assert regenerated.name == "zturbo_00003_.png"
    with Image.open(regenerated) as img:
        assert np.array_equal(np.asarray(img), original)


def test_aspect_and_bad_size(tiny_models, tmp_path):
    bad = runner.invoke(app, ["generate", "x", "--width", "100", "--models-dir", str(tiny_models)])
    assert bad.exit_code != 0
    assert "width must be a multiple of 16" in str(bad.exception) + bad.output


def test_models_lists_present_and_missing(tiny_models, tmp_path):
    result = invoke("models", "--models-dir", str(tiny_models))
    assert result.exit_code == 0
    assert "[ok] diffusion_models/z_image_turbo_bf16.safetensors: Z-Image DiT" in result.stdout
    assert "all three files present" in result.stdout
    empty = invoke("models", "--models-dir", str(tmp_path))
    assert "missing (expected vae/ae.safetensors)" in empty.stdout
    assert "zturbo models pull" in empty.stdout


@pytest.mark.parametrize(
    ("aspect", "mp", "size"),
    [("16:9", 1.0, (1360, 768)), ("1:1", 1.0, (1024, 1024)), ("9:16", 0.5, (544, 960))],
)
def test_size_for_aspect(aspect, mp, size):
    from zturbo.request import size_for_aspect

    w, h = size_for_aspect(aspect, mp)
    assert (w, h) == size and w % 16 == 0 and h % 16 == 0


def test_bench_parses_the_shared_options():
    from zturbo.bench.cli import parse

    args = parse(["--sizes", "1024x1024,1280x720", "--vram-plans", "4G,8G"], default_results=Path("r"))
    assert args.sizes == "1024x1024,1280x720" and args.vram_plans == "4G,8G" and args.results == Path("r")
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "--vram-plans" in result.stdout


def test_fp8_load_is_recorded_in_the_png(tiny_models, tmp_path):
    result = invoke(
        "generate",
        "a cat",
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "1",
        "--seed",
        "1",
        "--weight-dtype",
        "fp8_e4m3fn",
        "--models-dir",
        str(tiny_models),
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    (path,) = [Path(line) for line in result.stdout.split() if line.endswith(".png")]
    with Image.open(path) as img:
        assert json.loads(img.info["prompt"])["1"]["inputs"]["weight_dtype"] == "fp8_e4m3fn"
        assert "Weight dtype: fp8_e4m3fn" in img.info["parameters"]
    again = invoke("generate", "--from", str(path), "--models-dir", str(tiny_models), "--out", str(tmp_path))
    assert again.exit_code == 0, again.output
    (regenerated,) = [Path(line) for line in again.stdout.split() if line.endswith(".png")]
    with Image.open(regenerated) as img, Image.open(path) as first:
        assert "Weight dtype: fp8_e4m3fn" in img.info["parameters"]  # reapplied, not back to bf16
        assert np.array_equal(np.asarray(img), np.asarray(first))


def test_weight_dtype_is_read_from_either_chunk():
    from zturbo.output.metadata import weight_dtype_from_chunks

    graph = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z.gguf", "weight_dtype": "fp8_e5m2"}}}
    assert weight_dtype_from_chunks({"prompt": json.dumps(graph)}) == "fp8_e5m2"
    assert weight_dtype_from_chunks(
        {"parameters": "a\nNegative prompt: \nSteps: 8, Weight dtype: fp8_e4m3fn"}
    ) == ("fp8_e4m3fn")
    assert weight_dtype_from_chunks({"parameters": "a\nNegative prompt: \nSteps: 8"}) == "default"
    assert weight_dtype_from_chunks({"prompt": "not json"}) == "default"


def test_run_and_serve_take_the_speed_options(tiny_models, tmp_path, monkeypatch):
    import zturbo.server.app
    import zturbo.workflows

    seen = {}

    def fake_run(workflow, sets, settings, **kwargs):
        seen["run"] = settings.speed_options
        return []

    monkeypatch.setattr(zturbo.workflows, "run_workflow_cli", fake_run)
    monkeypatch.setattr(zturbo.server.app, "serve", lambda config: seen.setdefault("serve", config))
    workflow = tmp_path / "w.json"
    workflow.write_text("{}")
    result = invoke(
        "run", str(workflow), "--speed", "compile", "--step-cache", "0.1", "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 0, result.output
    assert (seen["run"].mode, seen["run"].step_cache) == ("compile", 0.1)
    assert invoke("serve", "--speed", "max", "--output-dir", str(tmp_path / "o")).exit_code == 0
    assert seen["serve"].engine.speed_options.mode == "max"
    bad = runner.invoke(app, ["run", "w.json", "--speed", "turbo"])
    assert bad.exit_code != 0 and "speed must be one of" in str(bad.exception)


def test_generate_warns_of_a_negative_at_cfg1(tiny_models, tmp_path):
    args = ["generate", "x", "--width", "32", "--height", "32", "--steps", "1", "--models-dir"]
    args += [str(tiny_models), "--out", str(tmp_path / "out"), "--device", "cpu", "--negative", "blurry"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "negative prompt does nothing at cfg 1" in result.output
