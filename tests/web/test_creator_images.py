"""The creator page's image tools in headless Chromium against the real server and engine (tiny models):
variations of a chosen picture at a denoise level, a painted inpaint mask, and the gallery's Upscale ×2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from server.conftest import LiveServer

from zturbo.server import ServerConfig

SET_DENOISE = """(value) => {
  const el = document.querySelector('#denoise');
  el.value = value;
  el.dispatchEvent(new Event('input', {bubbles: true}));
}"""


def picture(path: Path, width: int, height: int) -> Path:
    pixels = np.random.default_rng(3).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def run_job(page: Any, prompt: str) -> Any:
    page.fill("#prompt", prompt)
    page.click("#generate")
    job = page.locator(".job").first
    job.locator("img.result").wait_for(timeout=120_000)
    assert job.get_attribute("data-state") == "done"
    return job


def last_graph(server: LiveServer) -> dict:
    history = httpx.get(f"{server.http}/history", timeout=10).json()
    entry = max(history.values(), key=lambda e: e["prompt"][0])
    return entry["prompt"][2]


def nodes(graph: dict, class_type: str) -> list[dict]:
    return [n["inputs"] for n in graph.values() if n["class_type"] == class_type]


def test_variations_of_a_chosen_picture(
    creator: Any, server: LiveServer, web_config: ServerConfig, tmp_path: Path, page_log: Any, screenshots: Path
) -> None:
    page = creator
    page.set_input_files("#init-file", str(picture(tmp_path / "photo.png", 80, 48)))
    page.locator("#init-editor").wait_for()
    assert (page.input_value("#width"), page.input_value("#height")) == ("80", "48")
    page.evaluate(SET_DENOISE, "0.5")
    assert page.inner_text("#denoise-value") == "0.50"
    page.fill("#steps", "2")
    page.screenshot(path=str(screenshots / "creator-init-image.png"), full_page=True)
    run_job(page, "a variation of the photo")
    assert page.evaluate("document.querySelector('.job img.result').naturalWidth") == 80

    graph = last_graph(server)
    assert nodes(graph, "LoadImage") == [{"image": "photo.png"}]
    (sampler,) = nodes(graph, "KSampler")
    assert sampler["denoise"] == 0.5 and sampler["latent_image"][0] in graph
    assert graph[sampler["latent_image"][0]]["class_type"] == "VAEEncode"
    assert (web_config.input_dir / "photo.png").is_file()
    assert page_log.errors == [] and page_log.http == []


def test_painting_a_mask_inpaints_only_there(
    creator: Any, server: LiveServer, web_config: ServerConfig, tmp_path: Path
) -> None:
    page = creator
    page.set_input_files("#init-file", str(picture(tmp_path / "room.png", 64, 64)))
    page.locator("#init-editor").wait_for()
    page.check("#mask-paint")
    page.fill("#brush-size", "60")
    box = page.locator("#mask-canvas").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=8)
    page.mouse.up()
    page.fill("#steps", "2")
    run_job(page, "a window in the wall")

    graph = last_graph(server)
    (mask_loader,) = nodes(graph, "LoadImageMask")
    assert mask_loader == {"image": "room-mask.png", "channel": "red"}
    assert nodes(graph, "SetLatentNoiseMask") and nodes(graph, "ImageCompositeMasked")
    with Image.open(web_config.input_dir / "room-mask.png") as img:
        mask = np.asarray(img.convert("L"))
    assert mask.shape == (64, 64)
    assert mask[32, 32] == 255 and mask[0, 0] == 0 and mask[32, 1] == 0  # a stroke across the middle


def test_gallery_upscale_doubles_the_image(creator: Any, server: LiveServer) -> None:
    page = creator
    page.select_option("#size", "custom")
    page.fill("#width", "64")
    page.fill("#height", "48")
    page.fill("#steps", "2")
    run_job(page, "a small boat")
    card = page.locator("#gallery .card").first
    card.wait_for()
    card.locator("button.upscale").click()
    job = page.locator(".job", has_text="Upscale ×2")
    job.locator("img.result").wait_for(timeout=120_000)
    size = job.locator("img.result").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [128, 96]
    graph = last_graph(server)
    (loader,) = nodes(graph, "LoadImage")
    assert loader["image"].endswith(" [output]")
    assert nodes(graph, "ImageScale")[0]["width"] == 128
