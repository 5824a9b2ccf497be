"""The real ComfyUI frontend at /comfy/ opens the official 2K upscaler template
(`utility_z_image_turbo_2k_upscaler.app.json`: an app-mode workflow whose pipeline is a subgraph) from its
file, unmodified: it opens in the frontend's App mode (an input panel with a Run button, no graph), and
Run makes the 2048² image on the real server and engine (tiny files
named like the real ones: RealESRGAN_x4plus as a tiny Compact net, fighter_jet.png 64² → ×4 → ×0.5 → 2048²)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from server.conftest import LiveServer
from test_comfy_frontend import open_frontend
from test_upscale import upscaler_files, upscaler_template

from zturbo.server import ServerConfig


def test_comfy_frontend_runs_the_2k_upscaler_template(
    page: Any, server: LiveServer, web_config: ServerConfig, page_log: Any, screenshots: Path
) -> None:
    upscaler_files(web_config.models_dir, web_config.input_dir)
    open_frontend(page, server)
    page.set_input_files("#comfy-file-input", str(upscaler_template()))
    page.wait_for_function("app.graph.nodes.some((n) => n.type === 'SaveImage')")
    page.get_by_role("button", name="Skip", exact=True).click()  # the first-run App mode tour
    run = page.get_by_role("button", name="Run", exact=True)
    with page.expect_response(
        lambda r: "/view?" in r.url and "z-image-upscaled_" in r.url, timeout=300_000
    ) as shown:
        run.click()
    assert shown.value.status == 200
    # the run ends in the frontend too (its "Cancel this run" goes once the server reports success)
    page.get_by_text("Cancel this run").wait_for(state="hidden", timeout=120_000)
    page.screenshot(path=str(screenshots / "comfy-frontend-2k-upscaler.png"))
    history = httpx.get(f"{server.http}/history", timeout=10).json()
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success"
    nodes = entry["prompt"][2]
    types = {n["class_type"] for n in nodes.values()}
    assert {"UpscaleModelLoader", "ImageUpscaleWithModel", "ImageScaleBy", "VAEEncode", "KSampler"} <= types
    assert any(":" in node_id for node_id in nodes)  # the frontend flattened the subgraph's nodes
    (written,) = web_config.output_dir.glob("z-image-upscaled_*.png")
    with Image.open(written) as img:
        assert img.size == (2048, 2048)
    assert page_log.errors == []
