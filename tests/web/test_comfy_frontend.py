"""The real ComfyUI frontend (PyPI `comfyui-frontend-package`) at /comfy/, against the real server and
engine: it loads, opens the official Z-Image-Turbo template from its JSON file, and its Run (queue)
button produces an image."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from server.conftest import LiveServer

from zturbo.server import ServerConfig

templates = pytest.importorskip("comfyui_workflow_templates_json")
TEMPLATE = Path(templates.__file__).parent / "templates" / "image_z_image_turbo.json"
# 404 is ComfyUI's "nothing here" for these (no user.css, no saved workflows). Template thumbnails are
# served from the templates' media packages (`comfyui-workflow-templates`), so they are no longer here.
EMPTY_404 = ("/user.css", "/api/userdata")
# The template's subgraph node and the widgets it promotes (1024² is slow on CPU; 64² takes a second).
SET_SMALL_SIZE = """() => {
  const node = app.graph.nodes.find((n) => n.widgets?.some((w) => w.name === 'width'));
  for (const w of node.widgets) if (w.name === 'width' || w.name === 'height') w.value = 64;
  return node.widgets.map((w) => [w.name, w.value]);
}"""


def open_frontend(page: Any, server: LiveServer) -> None:
    page.goto(server.http + "/comfy/")
    page.wait_for_function("window.app?.graph && document.querySelector('#comfy-file-input')", timeout=90_000)
    page.locator('[data-testid="queue-button"]').wait_for(timeout=60_000)
    page.keyboard.press("Escape")  # the first-run template browser


def test_comfy_frontend_runs_the_official_template(
    page: Any, server: LiveServer, web_config: ServerConfig, page_log: Any, screenshots: Path
) -> None:
    external: list[str] = []
    page.on(
        "request", lambda r: urlsplit(r.url).hostname not in ("127.0.0.1", None) and external.append(r.url)
    )
    open_frontend(page, server)

    page.set_input_files("#comfy-file-input", str(TEMPLATE))
    page.wait_for_function("app.graph.nodes.some((n) => n.type === 'SaveImage')")
    widgets = dict(page.evaluate(SET_SMALL_SIZE))
    assert widgets["width"] == 64 and widgets["unet_name"] == "z_image_turbo_bf16.safetensors"

    with page.expect_response(
        lambda r: "/view?" in r.url and "z-image-turbo_" in r.url, timeout=120_000
    ) as shown:
        page.click('[data-testid="queue-button"]')
    assert shown.value.status == 200
    page.wait_for_timeout(500)  # let the canvas draw the image before the screenshot
    page.screenshot(path=str(screenshots / "comfy-frontend.png"))

    outputs = list(web_config.output_dir.glob("z-image-turbo_*.png"))
    assert len(outputs) == 1
    history = httpx.get(f"{server.http}/history", timeout=10).json()
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success"
    assert entry["prompt"][3]["extra_pnginfo"]["workflow"]["nodes"], "the UI workflow travels with the prompt"
    unexpected = [u for u in page_log.http if not (u.startswith("404") and any(k in u for k in EMPTY_404))]
    assert unexpected == []
    assert page_log.errors == []
    assert external == [], f"the editor reached off this machine: {external}"


def test_comfy_frontend_settings_persist(page: Any, server: LiveServer, web_config: ServerConfig) -> None:
    open_frontend(page, server)
    page.evaluate("app.extensionManager.setting.set('Comfy.Sidebar.Location', 'right')")
    page.wait_for_timeout(300)
    settings = (web_config.user_dir / "default" / "comfy.settings.json").read_text()
    assert '"Comfy.Sidebar.Location": "right"' in settings
    page.reload()
    page.wait_for_function("window.app?.graph")
    value = page.evaluate("app.extensionManager.setting.get('Comfy.Sidebar.Location')")
    assert value == "right"
