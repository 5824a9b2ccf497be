"""The creator page's LoRA picker in headless Chromium against the real server and engine (tiny
models, CPU): the files of models/loras listed, two chosen with their own strengths, sent with the job
(LoraLoader nodes in the queued prompt), its unmatched keys named on the job's card, shown in the gallery's
settings, and put back by "Reuse"."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import torch

from zturbo.server import ServerConfig
from zturbo.testing.lora_files import block_modules, dit_shapes, random_factors, write_lora

BOGUS = "transformer.layers.0.attention.to_z.lora_A.weight"


@pytest.fixture
def loras(web_config: ServerConfig) -> list[str]:
    folder = web_config.models_dir / "loras"
    factors = random_factors(dit_shapes(), block_modules(), rank=2, seed=1)
    write_lora(folder / "a.safetensors", factors, extra={BOGUS: torch.zeros(2, 4)})
    write_lora(
        folder / "sub" / "b.safetensors", random_factors(dit_shapes(), block_modules(), rank=2, seed=2)
    )
    return ["a.safetensors", "sub/b.safetensors"]


def set_strength(page: Any, name: str, value: float) -> None:
    page.get_by_label(f"Strength of {name}").evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", value
    )


def chosen(page: Any) -> list[tuple[str, str]]:
    return page.eval_on_selector_all(
        "#lora-list .lora", "els => els.map(e => [e.dataset.name, e.querySelector('.lora-strength').value])"
    )


def test_lora_picker_sends_strengths_shows_them_and_reuse_restores_them(
    loras: list[str], creator: Any, server: Any, page_log: Any
) -> None:
    page = creator
    assert page.eval_on_selector_all("#lora-select option", "os => os.map(o => o.value)") == loras
    for name in loras:
        page.select_option("#lora-select", name)
        page.click("#lora-add")
    set_strength(page, "a.safetensors", 0.5)
    set_strength(page, "sub/b.safetensors", -1.25)
    assert page.locator("#lora-list .lora-value").all_inner_texts() == ["0.50", "-1.25"]
    page.select_option("#size", "custom")
    page.fill("#width", "32")
    page.fill("#height", "32")
    page.fill("#steps", "1")
    page.fill("#prompt", "a fox")
    page.click("#generate")
    page.locator(".job img.result").first.wait_for(timeout=120_000)
    warning = page.locator(".job .lora-warning").inner_text()  # the WebSocket report, on the job's card
    assert warning == f"LoRA a.safetensors: 1 keys matched nothing: {BOGUS}"

    with urllib.request.urlopen(server.http + "/history") as response:
        (entry,) = json.load(response).values()
    nodes = [n["inputs"] for n in entry["prompt"][2].values() if n["class_type"] == "LoraLoader"]
    assert [(n["lora_name"], n["strength_model"], n["strength_clip"]) for n in nodes] == [
        ("a.safetensors", 0.5, 0.5), ("sub/b.safetensors", -1.25, -1.25)
    ]  # fmt: skip
    card = page.locator("#gallery .card").first
    card.wait_for()
    assert "LoRA a.safetensors 0.5, sub/b.safetensors -1.25" in card.locator(".settings").inner_text()

    page.get_by_label("Remove a.safetensors").click()
    page.get_by_label("Remove sub/b.safetensors").click()
    assert chosen(page) == []
    card.locator("button.reuse").click()
    assert chosen(page) == [["a.safetensors", "0.5"], ["sub/b.safetensors", "-1.25"]]
    assert page_log.errors == [] and page_log.http == []
