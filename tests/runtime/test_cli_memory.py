"""`zturbo generate --vram ... --weight-dtype ...` on a tiny models folder (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from zturbo.cli import app
from zturbo.errors import InputError
from zturbo.runtime.settings import EngineSettings
from zturbo.server.config import ServerConfig

runner = CliRunner()


def generate(models: Path, out: Path, *extra: str):
    args = ["generate", "a hat", "--width", "32", "--height", "32", "--steps", "2", "--seed", "1"]
    args += ["--models-dir", str(models), "--out", str(out), "--device", "cpu", *extra]
    return runner.invoke(app, args, catch_exceptions=False)


@pytest.mark.parametrize(
    "extra",
    [
        ("--vram", "4G", "--weight-dtype", "fp8"),
        ("--vram", "0.01G", "--weight-dtype", "fp8_e5m2"),  # nothing fits: the leanest plan, streamed
        ("--vram", "unlimited"),
    ],
    ids=["4G-fp8", "tiny-budget-e5m2", "unlimited"],
)
def test_generate_with_memory_options(tiny_models: Path, tmp_path: Path, extra: tuple[str, ...]) -> None:
    result = generate(tiny_models, tmp_path, *extra)
    assert result.exit_code == 0, result.output
    assert [line for line in result.stdout.split() if line.endswith(".png")]


def test_bad_vram_is_refused_before_loading(tiny_models: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--vram must be one of auto, 4G"):
        generate(tiny_models, tmp_path, "--vram", "lots")


def test_server_config_carries_vram(tmp_path: Path) -> None:
    assert ServerConfig(models_dir=tmp_path, engine=EngineSettings(vram="8G")).engine.vram == "8G"
    assert ServerConfig(models_dir=tmp_path).engine.vram == "auto"
    with pytest.raises(InputError, match="--vram"):
        EngineSettings(vram="8 bananas")


@pytest.mark.parametrize("vram", ["4G", "0.01G"], ids=["resident", "streamed"])
def test_one_cli_image_computes_one_memory_plan(tiny_models: Path, tmp_path: Path, monkeypatch, vram: str):
    """The plan is decided once for the job (the CLI shows it, run_request, the loaders and the sampler
    reuse it); before the redesign one image planned four times."""
    from zturbo.runtime import memory_manager

    calls = []
    real = memory_manager.plan_memory
    monkeypatch.setattr(memory_manager, "plan_memory", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = generate(tiny_models, tmp_path, "--vram", vram)
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
