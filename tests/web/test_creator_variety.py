"""The creator page's seed variety in headless Chromium against the real server and engine (tiny
models, CPU): "Variations" queues the same prompt at 4 fresh seeds with variety on (a
ZTurboSeedVariety node in each queued prompt), and "Reuse" puts the strength back in the form."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def test_variations_queue_four_seeds_with_variety_and_reuse_restores_it(
    creator: Any, server: Any, page_log: Any
) -> None:
    page = creator
    page.select_option("#size", "custom")
    page.fill("#width", "32")
    page.fill("#height", "32")
    page.fill("#steps", "1")
    page.fill("#prompt", "a fox")
    page.fill("#variety-steps", "0.5")
    page.click("#variations")
    page.locator(".job").nth(3).locator("img.result").wait_for(timeout=120_000)
    assert page.locator(".job").count() == 4

    with urllib.request.urlopen(server.http + "/history") as response:
        entries = list(json.load(response).values())
    prompts = [entry["prompt"][2] for entry in entries]
    seeds = sorted(p["8"]["inputs"]["seed"] for p in prompts)
    assert len(entries) == 4 and seeds == list(range(seeds[0], seeds[0] + 4))
    for prompt in prompts:
        assert prompt["40"]["class_type"] == "ZTurboSeedVariety"
        assert prompt["40"]["inputs"]["strength"] == 0.3 and prompt["40"]["inputs"]["steps_fraction"] == 0.5
        assert prompt["5"]["inputs"]["text"] == "a fox" and prompt["8"]["inputs"]["model"] == ["40", 0]

    page.fill("#variety", "0")
    page.locator("#gallery .card").first.wait_for()
    page.locator("#gallery .card").first.locator("button.reuse").click()
    assert page.input_value("#variety") == "0.3"
    assert page_log.errors == [] and page_log.http == []
