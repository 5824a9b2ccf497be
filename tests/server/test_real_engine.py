"""The server on the real engine (tiny random-weight models named like the real files).

- the official Z-Image-Turbo template, converted from its UI format, queued with POST /prompt, gives the
  pixels `zturbo generate` gives for the same settings;
- maintained ComfyUI clients from PyPI, unpatched and used as their READMEs show: comfy-api-simplified
  submits an API-format prompt, receives the WebSocket events and downloads the image; comfy-script's
  script mode builds the graph from `/object_info` and runs it (in its own process: its runtime is
  global); comfyui-autograph converts the official template's UI format against our `/object_info`,
  submits it and fetches the image. Each result is checked in `/history`.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from server.conftest import LiveServer, finished_entry, real_engine_config, run_live
from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.generate import run_request
from zturbo.graph.formats import load_workflow_file
from zturbo.output.png import to_pil
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.server import create_app


def template() -> Path:
    spec = importlib.util.find_spec("comfyui_workflow_templates_json")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui-workflow-templates-json is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations))) / "templates" / "image_z_image_turbo.json"


@pytest.fixture(scope="module")
def real_server(tiny_models: Path, tmp_path_factory) -> Iterator[LiveServer]:
    yield from run_live(create_app(real_engine_config(tiny_models, tmp_path_factory.mktemp("real_server"))))


def wait_for_history(live: LiveServer, prompt_id: str, timeout: float = 120) -> dict:
    return finished_entry(live.http, prompt_id, timeout)


def test_converted_template_over_http_equals_generate(real_server: LiveServer, tiny_models: Path):
    prompt, workflow = load_workflow_file(template())
    prompt["57:13"]["inputs"].update(width=256, height=192)  # keep the CPU run short
    response = httpx.post(
        f"{real_server.http}/prompt",
        timeout=30,
        json={"prompt": prompt, "client_id": "t", "extra_data": {"extra_pnginfo": {"workflow": workflow}}},
    )
    assert response.status_code == 200, response.text
    entry = wait_for_history(real_server, response.json()["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = entry["outputs"]["9"]["images"]
    png = httpx.get(f"{real_server.http}/view", params=image, timeout=30)
    with Image.open(io.BytesIO(png.content)) as img:
        served = np.asarray(img.convert("RGB"))
        assert json.loads(img.text["workflow"])["definitions"]["subgraphs"]
        assert json.loads(img.text["prompt"])["57:3"]["class_type"] == "KSampler"

    ks = prompt["57:3"]["inputs"]
    request = GenerationRequest(
        prompt["57:27"]["inputs"]["text"],
        width=256,
        height=192,
        steps=ks["steps"],
        cfg=ks["cfg"],
        sampler=ks["sampler_name"],
        scheduler=ks["scheduler"],
        seed=ks["seed"],
        shift=prompt["57:11"]["inputs"]["shift"],
    )
    ours = run_request(Engine(EngineSettings("cpu")), resolve_models(tiny_models), request)
    assert np.array_equal(np.asarray(to_pil(ours.images[0])), served)


def test_comfy_api_simplified_client(real_server: LiveServer, tmp_path: Path, caplog):
    comfy_api_simplified = pytest.importorskip("comfy_api_simplified")
    prompt, _ = load_workflow_file(template())
    api_json = tmp_path / "workflow_api.json"
    api_json.write_text(json.dumps(prompt), encoding="utf-8")

    # As the package's README shows: wrap the server URL and an API-format workflow, edit by node title, queue.
    api = comfy_api_simplified.ComfyApiWrapper(real_server.http + "/")
    wf = comfy_api_simplified.ComfyWorkflowWrapper(str(api_json))
    wf.set_node_param("EmptySD3LatentImage", "width", 128)
    wf.set_node_param("EmptySD3LatentImage", "height", 128)
    wf.set_node_param("KSampler", "seed", 42)
    with caplog.at_level(logging.DEBUG, logger="comfy_api_simplified"):
        results = api.queue_and_wait_images(wf, "Save Image")

    (data,) = results.values()
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.size == (128, 128)
        assert json.loads(img.text["prompt"])["57:3"]["inputs"]["seed"] == 42
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "'type': 'progress'" in logged and "'type': 'executed'" in logged


COMFY_SCRIPT = """
from comfy_script.runtime import *
load('{url}/')
from comfy_script.runtime.nodes import *

with Workflow(wait=True):
    model = UNETLoader('z_image_turbo_bf16.safetensors', 'default')
    model = ModelSamplingAuraFlow(model, 3)
    clip = CLIPLoader('qwen_3_4b.safetensors', 'lumina2', 'default')
    vae = VAELoader('ae.safetensors')
    positive = CLIPTextEncode('一只红狐狸 in the snow', clip)
    negative = ConditioningZeroOut(positive)
    latent = EmptySD3LatentImage(64, 48, 1)
    latent = KSampler(model, 11, 4, 1, 'res_multistep', 'simple', positive, negative, latent, 1)
    SaveImage(VAEDecode(latent, vae), 'comfyscript')
"""


def history_images(live: LiveServer, prefix: str) -> list[tuple[dict, dict]]:
    """(history entry, image ref) of every saved image whose name starts with `prefix`."""
    found = []
    for entry in httpx.get(f"{live.http}/history", timeout=30).json().values():
        for output in entry["outputs"].values():
            found += [
                (entry, image) for image in output.get("images", []) if image["filename"].startswith(prefix)
            ]
    return found


def served_image(live: LiveServer, image: dict) -> Image.Image:
    response = httpx.get(f"{live.http}/view", params=image, timeout=30)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


def test_comfy_script_script_mode(real_server: LiveServer, tmp_path: Path):
    pytest.importorskip("comfy_script")
    script = tmp_path / "script.py"
    script.write_text(COMFY_SCRIPT.format(url=real_server.http), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        encoding="utf-8",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    ((entry, image),) = history_images(real_server, "comfyscript")
    assert entry["status"]["status_str"] == "success"
    sampler = next(n for n in entry["prompt"][2].values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["seed"] == 11 and sampler["inputs"]["steps"] == 4
    with served_image(real_server, image) as img:
        assert img.size == (64, 48)


def test_comfyui_autograph_client(real_server: LiveServer, tmp_path: Path, monkeypatch):
    autograph = pytest.importorskip("autograph")
    monkeypatch.setenv("AUTOGRAPH_COMFYUI_SERVER_URL", real_server.http)
    # As its README shows: convert the workspace file against the running server's /object_info,
    # edit widgets by class, submit, wait, fetch and save the images.
    api = autograph.ApiFlow(str(template()))
    api.EmptySD3LatentImage.width = 64
    api.EmptySD3LatentImage.height = 80
    api.KSampler.seed = 5
    api.SaveImage.filename_prefix = "autograph"
    result = api.submit(server_url=real_server.http, wait=True)
    images = result.fetch_images()
    images.save(str(tmp_path / "frame.###.png"))
    with Image.open(tmp_path / "frame.000.png") as saved:
        assert saved.size == (64, 80)
        saved_pixels = np.asarray(saved.convert("RGB"))
    prompt_id = result["submit"]["prompt_id"]
    entry = wait_for_history(real_server, prompt_id)
    assert entry["status"]["status_str"] == "success"
    (image,) = [i for o in entry["outputs"].values() for i in o["images"]]
    with served_image(real_server, image) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), saved_pixels)


def test_free_unloads_the_models(real_server: LiveServer):
    engine = real_server.app.state.zturbo.executor.context.engine
    assert engine._cache, "an earlier test in this module generated, so models are loaded"
    response = httpx.post(
        f"{real_server.http}/free", json={"unload_models": True, "free_memory": True}, timeout=30
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 30
    while engine._cache and time.monotonic() < deadline:  # /free is applied by the worker between jobs
        time.sleep(0.1)
    assert not engine._cache
