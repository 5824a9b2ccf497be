"""The creator page's "✨ enhance" in headless Chromium against the real server and engine (tiny
models, CPU): the prompt box fills with the text streamed while it is written, ends as the engine's
deterministic answer for the seed field's seed, and stays editable."""

from __future__ import annotations

from typing import Any

from zturbo.checkpoints.detect import TEXT_ENCODER
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.engine import Engine
from zturbo.runtime.settings import EngineSettings

IDEA = "a tram in the rain, 雨中的电车"


def expected(models, seed: int) -> str:
    engine = Engine(EngineSettings("cpu", "fp32"))
    clip = engine.load_text_encoder(models / COMFY_FILES[TEXT_ENCODER])
    return engine.enhance_prompt(clip, IDEA, seed=seed, max_tokens=300)


def test_enhance_button_streams_into_the_prompt_box(creator: Any, web_config: Any, page_log: Any) -> None:
    page = creator
    page.fill("#prompt", IDEA)
    page.fill("#seed", "5")
    page.click("#enhance")
    page.wait_for_function(
        "document.querySelector('#enhance-status').dataset.pieces !== undefined", timeout=120_000
    )
    # a textarea's value has its line breaks normalized to LF (HTML spec); random weights write CRLFs
    want = expected(web_config.models_dir, 5).replace("\r\n", "\n").replace("\r", "\n")
    assert page.input_value("#prompt") == want and want != IDEA
    assert int(page.get_attribute("#enhance-status", "data-pieces")) >= 2  # streamed, not only the answer
    assert "seed 5" in page.text_content("#enhance-status")
    assert page.is_enabled("#enhance") and page.is_editable("#prompt")
    page.fill("#prompt", want + " edited")  # the result is the user's to edit
    assert page.input_value("#prompt").endswith(" edited")
    page.fill("#prompt", "")
    page.click("#enhance")
    assert "Write a short idea first." in page.text_content("#enhance-status")
    assert page_log.errors == [] and page_log.http == []
