"""The creator page's ControlNet panel in headless Chromium (real server and engine, tiny files named
like the real ones): a control image with a type picker, a preview of the preprocessed map computed by
the server, and a generated image whose queued graph holds the ControlNet nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from server.conftest import LiveServer
from test_creator import generate, small_size

from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig
from zturbo.testing.controlnet_files import CONTROL_MODELS, FILE_NAMES, write_controlnet
from zturbo.testing.synthetic import write_comfy_models

PREVIEW_READY = "(() => { const p = document.querySelector('#control-preview'); return !p.hidden && p.complete && p.naturalWidth > 0 && p.src.includes(TYPE); })()"


@pytest.fixture(scope="module")
def control_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cn_creator_models")
    write_comfy_models(root, CONTROL_MODELS, dtype=torch.bfloat16)
    write_controlnet(root / "model_patches" / FILE_NAMES["2.1 Lite"], "2.1 Lite", dtype=torch.bfloat16)
    return root


@pytest.fixture
def web_config(tmp_path: Path, control_models: Path) -> ServerConfig:
    return ServerConfig(
        models_dir=control_models,
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
        user_dir=tmp_path / "user",
        engine=EngineSettings("cpu", vram="auto"),
    )


def test_control_panel_previews_the_map_and_generates(
    creator: Any, server: LiveServer, page_log: Any, screenshots: Path, tmp_path: Path
) -> None:
    from test_controlnet_workflows import write_input_image

    photo = write_input_image(tmp_path / "photo.png", 64, 48)
    page = creator
    page.set_input_files("#control-file", str(photo))
    page.wait_for_function(PREVIEW_READY.replace("TYPE", "'type=canny'"), timeout=60_000)
    assert page.evaluate("document.querySelector('#control-preview').naturalWidth") == 64
    page.select_option("#control-type", "depth")
    page.wait_for_function(PREVIEW_READY.replace("TYPE", "'type=depth'"), timeout=60_000)
    assert page.is_hidden("#control-canny")
    page.select_option("#control-type", "canny")
    page.wait_for_function(PREVIEW_READY.replace("TYPE", "'type=canny'"), timeout=60_000)
    page.screenshot(path=str(screenshots / "creator-control.png"))

    small_size(page, 64, 48)
    generate(page, "a lighthouse")
    history = httpx.get(f"{server.http}/history", timeout=10).json()
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success"
    nodes = {n["class_type"]: n["inputs"] for n in entry["prompt"][2].values()}
    assert nodes["Canny"]["low_threshold"] == 0.4 and nodes["ZImageFunControlnet"]["strength"] == 0.75
    assert nodes["ModelPatchLoader"]["name"] == FILE_NAMES["2.1 Lite"]
    assert page_log.errors == []
