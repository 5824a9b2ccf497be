"""The creator page in headless Chromium against the real server and engine (tiny models, CPU)."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from server.conftest import LiveServer, wait_until

from zturbo.output.metadata import ModelFiles, api_graph, parameters_text
from zturbo.request import GenerationRequest
from zturbo.server import ServerConfig

MODELS = ModelFiles("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors")
# Records what the queue shows over time, so "progress, then the image" can be asserted afterwards.
WATCH_JOBS = """() => {
  window.__seen = [];
  new MutationObserver(() => {
    for (const job of document.querySelectorAll('.job')) {
      const state = job.querySelector('.job-state').textContent;
      const preview = Boolean(job.querySelector('img.preview'));
      const result = Boolean(job.querySelector('img.result'));
      const last = window.__seen[window.__seen.length - 1];
      const entry = {state, preview, result, progress: job.querySelector('progress').value};
      if (!last || JSON.stringify(last) !== JSON.stringify(entry)) window.__seen.push(entry);
    }
  }).observe(document.querySelector('#jobs'), {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def small_size(page: Any, width: int = 64, height: int = 64) -> None:
    page.select_option("#size", "custom")
    page.fill("#width", str(width))
    page.fill("#height", str(height))


def generate(page: Any, prompt: str) -> Any:
    """Type the prompt and start with the keyboard (Ctrl+Enter); return the finished job card."""
    page.fill("#prompt", prompt)
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    job = page.locator(".job").first
    job.locator("img.result").wait_for(timeout=120_000)
    return job


def png_with(path: Path, **chunks: str) -> Path:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (32, 32), (200, 120, 40)).save(path, pnginfo=info)
    return path


def test_generate_shows_progress_then_the_image(creator: Any, screenshots: Path, page_log: Any) -> None:
    page = creator
    small_size(page)
    page.evaluate(WATCH_JOBS)
    job = generate(page, "a red fox in the snow, golden hour")

    assert job.get_attribute("data-state") == "done"
    seen = page.evaluate("window.__seen")
    steps = [s for s in seen if "step" in s["state"]]
    assert steps, f"no progress shown: {seen}"
    first_result = next(i for i, s in enumerate(seen) if s["result"])
    assert seen.index(steps[0]) < first_result and not steps[0]["result"]
    assert "step 8/8" in " ".join(s["state"] for s in steps)
    assert any(s["preview"] and not s["result"] for s in steps), "no live preview while sampling"
    assert page.evaluate("document.querySelector('.job img.result').naturalWidth") == 64

    card = page.locator("#gallery .card").first
    card.wait_for()
    assert "a red fox in the snow" in card.locator(".prompt").inner_text()
    assert "64×64 · 8 steps" in card.locator(".settings").inner_text()
    page.screenshot(path=str(screenshots / "creator.png"), full_page=True)
    assert page_log.errors == [] and page_log.http == []


def test_reuse_download_and_delete_with_confirmation(creator: Any, web_config: ServerConfig) -> None:
    page = creator
    small_size(page, 96, 64)
    page.fill("#steps", "3")
    generate(page, "a small lighthouse")
    card = page.locator("#gallery .card").first
    card.wait_for()
    filename = card.get_attribute("data-filename")
    assert (web_config.output_dir / filename).is_file()

    page.fill("#prompt", "")
    page.fill("#steps", "8")
    card.locator("button.reuse").click()
    assert page.input_value("#prompt") == "a small lighthouse"
    assert (page.input_value("#width"), page.input_value("#height"), page.input_value("#steps")) == (
        "96",
        "64",
        "3",
    )
    assert page.is_checked('input[name="seed-mode"][value="fixed"]')

    with page.expect_download() as download:
        card.locator("a[download]").click()
    assert download.value.suggested_filename == filename

    card.locator("button.delete").click()
    page.locator("#confirm-dialog button[value=cancel]").click()
    assert (web_config.output_dir / filename).is_file()
    card.locator("button.delete").click()
    page.locator("#confirm-ok").click()
    page.locator("#gallery-empty").wait_for()
    assert not (web_config.output_dir / filename).exists()


def test_cancel_a_queued_and_a_running_job(creator: Any, web_config: ServerConfig) -> None:
    page = creator
    # Long enough to be caught running (~15 s on 2 CPU cores; it is cancelled within a step): at 64² the
    # 100 steps took about a second and in CI the job once ended before the test reached its Cancel.
    small_size(page, 1024, 1024)
    page.fill("#steps", "100")
    page.fill("#count", "2")
    page.fill("#prompt", "a slow comet")
    page.click("#generate")
    running = page.locator(".job[data-state=running]")
    running.wait_for(timeout=60_000)
    queued = page.locator(".job[data-state=queued]")
    queued.locator("button.cancel").click()
    page.locator(".job[data-state=cancelled]").wait_for()
    running.locator("button.cancel").click()
    page.wait_for_function(
        "document.querySelectorAll('.job[data-state=cancelled]').length === 2", timeout=60_000
    )
    assert page.locator(".job img.result").count() == 0
    assert list(web_config.output_dir.glob("*.png")) == []


def test_cancelling_a_queued_job_that_starts_meanwhile_stops_it(
    creator: Any, web_config: ServerConfig, server: LiveServer
) -> None:
    """The race behind a queued job's Cancel: the job ahead ends and this one starts while the delete is on
    its way (the server's delete drops pending prompts only). Forced here by holding the delete until the
    server runs the prompt; the card must still end cancelled, the job stopped, nothing saved."""
    page = creator
    small_size(page, 512, 512)
    page.fill("#steps", "100")
    page.fill("#count", "2")
    page.fill("#prompt", "a racing comet")

    def queue_state() -> dict:
        with urllib.request.urlopen(server.http + "/queue", timeout=10) as response:
            return json.load(response)

    def start_it_first(route: Any) -> None:
        if route.request.method == "POST":  # the delete: let the queued prompt start before it lands
            interrupt = urllib.request.Request(
                server.http + "/interrupt", data=b"{}", headers={"Content-Type": "application/json"}
            )
            urllib.request.urlopen(interrupt, timeout=10).close()
            wait_until(lambda: not queue_state()["queue_pending"] and queue_state()["queue_running"])
        route.continue_()

    page.route("**/queue", start_it_first)
    page.click("#generate")
    page.locator(".job[data-state=running]").wait_for(timeout=60_000)
    page.locator(".job[data-state=queued] button.cancel").click()
    page.wait_for_function(
        "document.querySelectorAll('.job[data-state=cancelled]').length === 2", timeout=60_000
    )
    wait_until(lambda: not queue_state()["queue_running"])
    assert page.locator(".job img.result").count() == 0
    assert list(web_config.output_dir.glob("*.png")) == []


def test_loading_a_png_restores_its_settings(creator: Any, tmp_path: Path) -> None:
    page = creator
    request = GenerationRequest(
        prompt="a lighthouse at dusk, oil painting",
        negative="blurry",
        width=1280,
        height=720,
        steps=12,
        cfg=3.5,
        sampler="euler",
        scheduler="beta",
        seed=424242,
    )
    png = png_with(tmp_path / "made-by-zturbo.png", parameters=parameters_text(request, MODELS))
    page.set_input_files("#open-file", str(png))
    page.locator("#drop-result", has_text="Loaded the settings").wait_for()

    assert page.input_value("#prompt") == request.prompt
    assert page.input_value("#size") == "1280x720"
    assert page.input_value("#steps") == "12" and page.input_value("#cfg") == "3.5"
    assert page.input_value("#sampler") == "euler" and page.input_value("#scheduler") == "beta"
    assert page.input_value("#seed") == "424242"
    assert page.is_visible("#negative") and page.input_value("#negative") == "blurry"


def test_dropping_a_comfyui_png_loads_settings_and_runs_its_workflow(creator: Any, tmp_path: Path) -> None:
    page = creator
    request = GenerationRequest(prompt="a paper boat", width=64, height=64, steps=2, seed=77)
    png = png_with(tmp_path / "ComfyUI_00001_.png", prompt=json.dumps(api_graph(request, MODELS)))
    data = base64.b64encode(png.read_bytes()).decode()
    page.evaluate(
        """([data, name]) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, {type: 'image/png'}));
          document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [data, png.name],
    )
    page.locator("#drop-result", has_text="Loaded the settings").wait_for()
    assert page.input_value("#prompt") == "a paper boat"
    assert page.input_value("#seed") == "77" and page.input_value("#width") == "64"

    page.locator("#drop-result button.run-workflow").click()
    job = page.locator(".job", has_text="Workflow: ComfyUI_00001_.png")
    job.locator("img.result").wait_for(timeout=120_000)
    assert job.get_attribute("data-state") == "done"


def test_style_presets(creator: Any, web_config: ServerConfig, screenshots: Path) -> None:
    page = creator
    page.fill("#prompt", "a cat reading a book")
    page.select_option("#style", label="Blog cover")
    assert page.input_value("#size") == "1280x720"
    assert "Editorial blog cover illustration of a cat reading a book" in page.inner_text("#style-preview")
    page.click("#style-manager summary")
    page.screenshot(path=str(screenshots / "creator-styles.png"))
    page.click("#style-manager summary")

    small_size(page)
    page.fill("#steps", "2")
    page.click("#generate")
    card = page.locator("#gallery .card").first
    card.wait_for(timeout=120_000)
    assert (
        card.locator(".prompt").inner_text().startswith("Editorial blog cover illustration of a cat reading")
    )

    page.click("#style-manager summary")
    page.fill("#style-name", "Sticker")
    page.fill("#style-template", "die-cut sticker of {subject}, white border")
    page.click("#style-save")
    page.locator("#style-message", has_text="Saved style").wait_for()
    assert page.input_value("#style") == "sticker"
    saved = json.loads((web_config.user_dir / "default" / "zturbo.presets.json").read_text())
    assert saved["presets"][0]["template"] == "die-cut sticker of {subject}, white border"

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#style", "sticker")
    page.click("#style-manager summary")
    page.click("#style-delete")
    page.click("#confirm-ok")
    page.locator("#style-message", has_text="Deleted style").wait_for()
    assert page.locator('#style option[value="sticker"]').count() == 0


def test_models_panel_shows_the_offline_error(
    page: Any, server: LiveServer, web_config: ServerConfig, monkeypatch: Any, screenshots: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    (web_config.models_dir / "vae" / "ae.safetensors").unlink()
    page.goto(server.http + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert "vae/ae.safetensors" in page.inner_text("#banner")

    page.click("#models-button")
    dialog = page.locator("#models-dialog")
    dialog.locator("[data-kind=vae] .state-missing").wait_for()
    assert dialog.locator("[data-kind=dit] .state-ok").is_visible()
    dialog.locator("#models-download-button").click()
    status = dialog.locator("#models-status.error")
    status.wait_for()
    assert "could not reach the Hugging Face hub" in status.inner_text()
    assert "Are you offline?" in status.inner_text()
    page.screenshot(path=str(screenshots / "creator-models-offline.png"))


def test_keyboard_labels_and_phone_layout(creator: Any, screenshots: Path) -> None:
    page = creator
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
          .filter((el) => !el.closest('[hidden]') && el.type !== 'hidden')
          .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
          .map((el) => el.outerHTML)"""
    )
    assert unlabelled == []
    page.focus("#prompt")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "generate":
            break
    assert page.evaluate("document.activeElement.id") == "generate"

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(screenshots / "creator-phone.png"), full_page=True)


def test_turbo_above_cfg1_shows_the_guardrail_warning(creator: Any) -> None:
    page = creator
    small_size(page)
    page.fill("#steps", "1")
    page.fill("#cfg", "2")
    page.fill("#prompt", "a lighthouse")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#form-message').textContent.includes('Queued')")
    assert "Turbo is distilled for cfg 1" in page.text_content("#form-message")
