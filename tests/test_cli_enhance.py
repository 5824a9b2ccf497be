"""`zturbo enhance` and `zturbo generate --enhance` on the tiny models (real tokenizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zturbo.checkpoints.detect import TEXT_ENCODER
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.cli import app
from zturbo.engine import Engine
from zturbo.errors import ZTurboError
from zturbo.output.metadata import parse_parameters
from zturbo.runtime.settings import EngineSettings

runner = CliRunner()
IDEA = "a koi pond, 锦鲤"
SMALL = ("--width", "32", "--height", "32", "--steps", "2", "--seed", "7", "--device", "cpu")


def expected(models: Path, seed: int, tokens: int) -> str:
    engine = Engine(EngineSettings("cpu", "fp32"))
    clip = engine.load_text_encoder(models / COMFY_FILES[TEXT_ENCODER])
    return engine.enhance_prompt(clip, IDEA, seed=seed, max_tokens=tokens)


def test_enhance_streams_the_engines_text(tiny_models):
    args = [
        "enhance",
        IDEA,
        "--seed",
        "3",
        "--max-tokens",
        "12",
        "--models-dir",
        str(tiny_models),
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == expected(tiny_models, 3, 12)
    again = runner.invoke(app, [*args[:3], "4", *args[4:]], catch_exceptions=False)
    assert again.stdout.strip() != result.stdout.strip()


def test_generate_enhance_draws_and_records_the_enhanced_prompt(tiny_models, tmp_path):
    out = tmp_path / "out"
    common = (*SMALL, "--models-dir", str(tiny_models), "--out", str(out))
    result = runner.invoke(app, ["generate", IDEA, "--enhance", "--enhance-tokens", "10", *common])
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.split("\n") if line.endswith(".png")]
    assert len(paths) == 1 and result.stdout.strip() == str(paths[0])  # stdout: the paths only
    enhanced = expected(tiny_models, 7, 10)
    assert f"enhanced prompt: {enhanced}" in result.stderr
    with Image.open(paths[0]) as img:
        request, _ = parse_parameters(img.info["parameters"])
        first = np.asarray(img)
    assert (request.prompt, request.enhanced_from) == (enhanced, IDEA)
    # --from reproduces the image from the recorded (enhanced) prompt, with no enhancing
    again = runner.invoke(app, ["generate", "--from", str(paths[0]), *common])
    assert again.exit_code == 0, again.output
    assert "enhanced prompt" not in again.stderr
    with Image.open(again.stdout.strip()) as img:
        assert np.array_equal(np.asarray(img), first)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enhance", IDEA, "--max-tokens", "0"], "max_tokens must be 1..1024"),
        (["enhance", " "], "prompt is empty"),
        (["generate", "--from", "x.png", "--enhance"], "--enhance needs a prompt on the command line"),
    ],
)
def test_bad_options_are_one_line(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--models-dir", str(tmp_path)])
    assert isinstance(result.exception, ZTurboError), result.output
    assert message in str(result.exception)
