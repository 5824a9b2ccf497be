"""LoRAs in `serve` on the real engine (tiny random-weight models named like the real files):

- the official template `basic_switch_node.json` (LoraLoaderModelOnly) runs through POST /prompt, and
  its LoRA's unmatched keys are named in the job's history (`status.messages`) and in a WebSocket
  message to the client that queued it (and only to it);
- switching LoRAs between jobs (A, B, none) leaves nothing behind: after "none" the DiT's weights equal
  the base bit for bit, in the same storages, with no backups or side paths kept.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from websockets.sync.client import connect

from server.conftest import LiveServer, queue_prompt, run_live
from zturbo.graph.formats import load_workflow_file
from zturbo.nodes.lora import LORA_MESSAGE
from zturbo.output.metadata import ModelFiles, api_graph
from zturbo.patches.apply import PatchedLinear
from zturbo.patches.live import patch_state
from zturbo.request import GenerationRequest, LoraChoice
from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig, create_app
from zturbo.testing.lora_files import block_modules, dit_shapes, random_factors, write_lora

TEMPLATE_LORA = "pixel_art_style_z_image_turbo.safetensors"
BOGUS = "transformer.layers.1.feed_forward.w9.lora_A.weight"


def template() -> Path:
    spec = importlib.util.find_spec("comfyui_workflow_templates_json")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui-workflow-templates-json is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations))) / "templates" / "basic_switch_node.json"


@pytest.fixture(scope="module")
def models(tiny_models: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora_serve_models")
    for sub in tiny_models.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            shutil.copytree(sub, root / sub.name)
    loras = root / "loras"
    shapes = dit_shapes()
    write_lora(loras / TEMPLATE_LORA, random_factors(shapes, block_modules(), rank=2, seed=1),
               extra={BOGUS: torch.zeros(2, 4)})  # fmt: skip
    write_lora(loras / "a.safetensors", random_factors(shapes, block_modules(), rank=2, seed=2))
    write_lora(
        loras / "b.safetensors", random_factors(shapes, block_modules(indices=(1,)), rank=3, seed=3), "kohya"
    )
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("lora_server")
    config = ServerConfig(
        models_dir=models, output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
        user_dir=root / "user", engine=EngineSettings("cpu", vram="auto"),
    )  # fmt: skip
    yield from run_live(create_app(config))


def queue(live: LiveServer, prompt: dict, client_id: str) -> dict:
    entry = queue_prompt(live.http, prompt, client_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def messages_of(ws, until_prompt: str) -> list[dict]:
    """Every WebSocket message up to ComfyUI's end signal of `until_prompt`."""
    got = []
    while True:
        raw = ws.recv(timeout=120)
        if not isinstance(raw, str):
            continue
        message = json.loads(raw)
        got.append(message)
        data = message.get("data", {})
        if (
            message["type"] == "executing"
            and data.get("node") is None
            and data.get("prompt_id") == until_prompt
        ):
            return got


def test_switch_template_runs_and_names_unmatched_keys_in_history_and_ws(server: LiveServer, caplog):
    prompt, _ = load_workflow_file(template())
    prompt["64:57"]["inputs"].update(width=32, height=32)
    prompt["64:58"]["inputs"]["steps"] = 1
    with connect(server.ws("queuer")) as ws, connect(server.ws("bystander")) as other:
        entry = queue(server, prompt, "queuer")
        prompt_id = entry["prompt"][1]
        sent = messages_of(ws, prompt_id)
        assert entry["outputs"]["63"]["images"]
        (kept,) = [data for event, data in entry["status"]["messages"] if event == LORA_MESSAGE]
        assert kept["unmatched"] == [BOGUS] and kept["lora_name"] == TEMPLATE_LORA and kept["node"] == "62"
        assert any(BOGUS in line for line in kept["report"]) and "1 keys not used" in kept["summary"]
        (live_message,) = [m["data"] for m in sent if m["type"] == LORA_MESSAGE]
        assert live_message["unmatched"] == [BOGUS] and live_message["prompt_id"] == prompt_id
        other_types = []
        try:
            while True:
                other_types.append(json.loads(other.recv(timeout=0.5))["type"])
        except TimeoutError:
            pass
        assert LORA_MESSAGE not in other_types  # only the client that queued the job is told
    assert any(BOGUS in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)  # the server log


def dit_of(live: LiveServer):
    engine = live.app.state.zturbo.executor.context.engine
    (component,) = [model.component for key, model in engine._cache.items() if key[0] == "dit"]
    return component


def test_switching_loras_between_jobs_leaves_the_base_weights(server: LiveServer):
    files = ModelFiles("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors")
    base = GenerationRequest("a fox", width=32, height=32, steps=1, seed=1)

    def run(*loras: LoraChoice) -> None:
        queue(server, api_graph(GenerationRequest(**{**base.__dict__, "loras": loras}), files), "switcher")

    run()
    component = dit_of(server)
    before = {k: v.detach().clone() for k, v in component.module.state_dict().items()}
    storages = {k: v.data_ptr() for k, v in component.module.state_dict().items()}
    run(LoraChoice("a.safetensors", 0.8))
    after_a = component.module.state_dict()
    assert any(not torch.equal(before[k], after_a[k]) for k in before)  # A changed the live weights
    run(LoraChoice("b.safetensors", -1.0), LoraChoice("a.safetensors", 0.5, 0.0))
    state = patch_state(component)
    assert state.backups  # what B and A patched is backed up while they are applied
    run()
    now = component.module.state_dict()
    assert before.keys() == now.keys()
    assert all(torch.equal(before[k], now[k]) for k in before), [
        k for k in before if not torch.equal(before[k], now[k])
    ]
    assert {k: v.data_ptr() for k, v in now.items()} == storages  # no new copies of any weight
    assert not state.backups and not state.wrapped and not state.applied
    assert not any(isinstance(m, PatchedLinear) for m in component.module.modules())
