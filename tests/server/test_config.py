"""ServerConfig: defaults and validation."""

from __future__ import annotations

import pytest

from zturbo.errors import InputError
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
