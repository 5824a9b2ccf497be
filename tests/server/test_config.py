"""ServerConfig: defaults and validation."""

from __future__ import annotations

import pytest

from zturbo.errors import InputError
from zturbo.runtime.settings import EngineSettings
from zturbo.server.config import ServerConfig


def test_previews_default_to_none_like_comfyui(tmp_path):
    """API clients that treat every binary frame as a result image rely on ComfyUI's default."""
    config = ServerConfig(output_dir=tmp_path / "o")
    assert config.preview_method == "none"
    assert not config.previews_for({})
    assert config.previews_for({"preview_method": "auto"})
    assert ServerConfig(output_dir=tmp_path / "o", preview_method="latent2rgb").previews_for({})
    assert not ServerConfig(output_dir=tmp_path / "o", preview_method="auto").previews_for(
        {"preview_method": "none"}
    )
    with pytest.raises(InputError, match="preview_method must be one of none, auto, latent2rgb"):
        ServerConfig(preview_method="taesd-xl")


def test_engine_settings_are_validated_and_reach_the_engine(tmp_path):
    from zturbo.workflows import make_context

    settings = EngineSettings("cpu", speed="compile", step_cache=0.1)
    config = ServerConfig(output_dir=tmp_path / "o", engine=settings)
    context = make_context(config.engine, models_dir=tmp_path, output_dir=tmp_path / "o", input_dir=tmp_path / "i")
    assert context.engine.settings == settings
    assert (context.engine.speed.mode, context.engine.speed.step_cache) == ("compile", 0.1)
    default = ServerConfig(output_dir=tmp_path / "o").engine
    assert (default.speed, default.vram) == ("eager", "auto")  # a server plans its GPU memory
    with pytest.raises(InputError, match="speed must be one of"):
        EngineSettings(speed="turbo")
    with pytest.raises(InputError, match="step cache must be a finite number"):
        EngineSettings(step_cache=-1.0)


def test_serve_flags_reach_the_config(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import zturbo.server.app as server_app
    from zturbo.cli import app

    seen = []
    monkeypatch.setattr(server_app, "serve", lambda config: seen.append(config))
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--output-dir", str(tmp_path / "out"),
            "--data-dir", str(tmp_path / "state"),
            "--allowed-host", "box.lan",
            "--allowed-host", "zturbo.example",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.data_dir == tmp_path / "state" and config.state_db.parent == tmp_path / "state"
    assert config.allowed_hosts == ("box.lan", "zturbo.example")
    assert config.user_dir == tmp_path / "state" / "user"
