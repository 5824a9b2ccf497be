"""The real ComfyUI frontend at /comfy/ opens the official ControlNet template from its JSON file,
unmodified, and its Run button produces an image on the real server and engine (tiny files named
like the real ones: the 30-layer tiny DiT and a ControlNet 1.0 in models/model_patches/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from server.conftest import LiveServer
from test_comfy_frontend import open_frontend

from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig
from zturbo.testing.controlnet_files import CONTROL_MODELS, FILE_NAMES, write_controlnet
from zturbo.testing.synthetic import write_comfy_models

templates = pytest.importorskip("comfyui_workflow_templates_json")
TEMPLATE = Path(templates.__file__).parent / "templates" / "image_z_image_turbo_fun_union_controlnet.json"
INPUT = "image_z_image_turbo_fun_union_controlnet_input_image.png"


@pytest.fixture(scope="module")
def control_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cn_web_models")
    write_comfy_models(root, CONTROL_MODELS, dtype=torch.bfloat16)
    write_controlnet(root / "model_patches" / FILE_NAMES["1.0"], "1.0", dtype=torch.bfloat16)
    return root


@pytest.fixture
def web_config(tmp_path: Path, control_models: Path) -> ServerConfig:
    from test_controlnet_workflows import write_input_image

    write_input_image(tmp_path / "input" / INPUT)
    return ServerConfig(
        models_dir=control_models,
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
        user_dir=tmp_path / "user",
        engine=EngineSettings("cpu", vram="auto"),
    )


def test_comfy_frontend_runs_the_controlnet_template(
    page: Any, server: LiveServer, web_config: ServerConfig, page_log: Any, screenshots: Path
) -> None:
    open_frontend(page, server)
    page.set_input_files("#comfy-file-input", str(TEMPLATE))
    page.wait_for_function("app.graph.nodes.some((n) => n.type === 'SaveImage')")
    with page.expect_response(
        lambda r: "/view?" in r.url and "z-image-turbo_" in r.url, timeout=300_000
    ) as shown:
        page.click('[data-testid="queue-button"]')
    assert shown.value.status == 200
    page.wait_for_timeout(500)
    page.screenshot(path=str(screenshots / "comfy-frontend-controlnet.png"))
    history = httpx.get(f"{server.http}/history", timeout=10).json()
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success"
    types = {n["class_type"] for n in entry["prompt"][2].values()}
    assert {"ModelPatchLoader", "QwenImageDiffsynthControlnet", "Canny"} <= types
    assert len(list(web_config.output_dir.glob("z-image-turbo_*.png"))) == 1
    assert page_log.errors == []
