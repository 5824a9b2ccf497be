"""The server with the real `zturbo.graph` executor and node registry, on a TEST-DOUBLE engine
(`FakeEngine` below: no weights, tiny tensors), over real uvicorn and WebSocket."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image
from websockets.sync.client import connect

from server.conftest import LiveServer, run_live, wait_until
from server.test_ws import events, finished, recv, recv_until
from zturbo.server import ServerConfig, create_app

executor_mod = pytest.importorskip("zturbo.graph.executor")
context_mod = pytest.importorskip("zturbo.nodes.context")
registry_mod = pytest.importorskip("zturbo.nodes.registry")


class FakeEngine:
    """TEST DOUBLE of `zturbo.nodes.engine_api.EngineAPI`: strings for models, seeded small tensors."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.loads: list[str] = []

    def load_dit(self, path: Path, weight_dtype: str) -> Any:
        self.loads.append(path.name)
        return "dit"

    def load_text_encoder(self, path: Path, device: str) -> Any:
        self.loads.append(path.name)
        return "clip"

    def load_vae(self, path: Path) -> Any:
        self.loads.append(path.name)
        return "vae"

    def encode_text(self, clip: Any, text: str) -> Any:
        return {"text": text}

    def zero_conditioning(self, cond: Any) -> Any:
        return {"zero": True}

    def with_shift(self, model: Any, shift: float, multiplier: float) -> Any:
        return f"{model}@{shift}"

    def sample(self, model, positive, negative, latent, *, seed, steps, progress, preview=False, **_: Any):
        for step in range(steps):
            progress(step + 1, steps, Image.new("RGB", (8, 8), (step * 20, 0, 0)) if preview else None)
            self.gate.wait(10)
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(latent.shape, generator=generator)

    def decode(self, vae: Any, latent: torch.Tensor) -> torch.Tensor:
        b, _, h, w = latent.shape
        return latent[:, :3].permute(0, 2, 3, 1).repeat_interleave(8, 1).repeat_interleave(8, 2).clamp(0, 1)

    def encode(self, vae: Any, image: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = image.shape
        return torch.zeros(b, 16, h // 8, w // 8)

    def sampler_names(self) -> list[str]:
        return ["euler", "res_multistep"]

    def scheduler_names(self) -> list[str]:
        return ["simple", "normal"]


def z_image_prompt(seed: int = 1, steps: int = 3, sampler: str = "res_multistep") -> dict:
    """The official Z-Image-Turbo graph in API format (64×64 so the test double stays tiny)."""
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"},
        },
        "2": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"},
        },
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["2", 0]}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 1.0,
                "sampler_name": sampler,
                "scheduler": "simple",
                "positive": ["5", 0],
                "negative": ["6", 0],
                "latent_image": ["7", 0],
                "denoise": 1.0,
            },
        },
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "z-image-turbo"}},
    }


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def real_live(config: ServerConfig, engine: FakeEngine) -> Iterator[LiveServer]:
    for folder, name in (
        ("diffusion_models", "z_image_turbo_bf16.safetensors"),
        ("text_encoders", "qwen_3_4b.safetensors"),
        ("vae", "ae.safetensors"),
    ):
        (config.models_dir / folder).mkdir(parents=True, exist_ok=True)
        (config.models_dir / folder / name).write_bytes(b"")
    context = context_mod.ExecutionContext(
        models_dir=config.models_dir,
        output_dir=config.output_dir,
        input_dir=config.input_dir,
        temp_dir=config.temp_dir,
        engine=engine,
    )
    executor = executor_mod.PromptExecutor(registry_mod.default_registry(context), context)
    yield from run_live(create_app(config, executor=executor))


def submit(live: LiveServer, prompt: dict, client_id: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{live.http}/prompt", json={"prompt": prompt, "client_id": client_id, **extra}, timeout=30
    )


def test_object_info_from_real_registry(real_live: LiveServer) -> None:
    info = httpx.get(f"{real_live.http}/object_info", timeout=30).json()
    assert {"KSampler", "UNETLoader", "SaveImage", "EmptySD3LatentImage"} <= set(info)
    assert info["KSampler"]["input_order"]["required"][:3] == ["model", "seed", "steps"]
    assert "z_image_turbo_bf16.safetensors" in info["UNETLoader"]["input"]["required"]["unet_name"][0]
    one = httpx.get(f"{real_live.http}/api/object_info/KSampler", timeout=30).json()
    assert one == {"KSampler": info["KSampler"]}
    models = httpx.get(f"{real_live.http}/models/diffusion_models", timeout=30).json()
    assert models == ["z_image_turbo_bf16.safetensors"]


def test_z_image_prompt_end_to_end(real_live: LiveServer, engine: FakeEngine) -> None:
    with connect(real_live.ws("me")) as ws:
        recv(ws)
        workflow = {"extra_pnginfo": {"workflow": {"id": "wf", "nodes": []}}}
        response = submit(real_live, z_image_prompt(seed=5), "me", extra_data=workflow)
        assert response.status_code == 200, response.text
        prompt_id = response.json()["prompt_id"]
        frames = recv_until(ws, finished(prompt_id), timeout=60)
        names = [n for n in events(frames) if n != "status"]
        assert names[0] == "execution_start" and names[-2:] == ["execution_success", "executing"]
        progress = [f["data"] for f in frames if isinstance(f, dict) and f["type"] == "progress"]
        assert [(p["value"], p["max"], p["node"]) for p in progress] == [
            (1, 3, "8"),
            (2, 3, "8"),
            (3, 3, "8"),
        ]
        assert sum(isinstance(f, bytes) for f in frames) == 3
        executed = next(f["data"] for f in frames if isinstance(f, dict) and f["type"] == "executed")
        image = executed["output"]["images"][0]
        assert executed["node"] == "10" and image["type"] == "output"

        entry = httpx.get(f"{real_live.http}/history/{prompt_id}", timeout=30).json()[prompt_id]
        assert entry["status"]["status_str"] == "success" and entry["outputs"]["10"]["images"] == [image]
        png = httpx.get(f"{real_live.http}/view", params=image, timeout=30)
        assert png.status_code == 200
        with Image.open(io.BytesIO(png.content)) as img:
            assert img.size == (64, 64)
            assert json.loads(img.text["prompt"])["8"]["class_type"] == "KSampler"
            assert json.loads(img.text["workflow"])["id"] == "wf"

        # A new seed re-runs only the sampler and what follows it; models stay loaded.
        no_previews = {"preview_method": "none"}
        again = submit(real_live, z_image_prompt(seed=6), "me", extra_data=no_previews).json()["prompt_id"]
        frames = recv_until(ws, finished(again), timeout=60)
        cached = next(
            f["data"]["nodes"] for f in frames if isinstance(f, dict) and f["type"] == "execution_cached"
        )
        ran = [f["data"]["node"] for f in frames if isinstance(f, dict) and f["type"] == "executing"][:-1]
        assert set(ran) == {"8", "9", "10"} and set(cached) == {"1", "2", "3", "4", "5", "6", "7"}
        assert len(engine.loads) == 3
        # A prompt that asks for no previews gets no binary frames.
        assert not any(isinstance(f, bytes) for f in frames)


def test_validation_error_shape(real_live: LiveServer) -> None:
    response = submit(real_live, z_image_prompt(sampler="no_such_sampler"), "me")
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    node = body["node_errors"]["8"]
    assert node["class_type"] == "KSampler" and node["dependent_outputs"] == ["10"]
    assert node["errors"][0]["type"] == "value_not_in_list"
    assert node["errors"][0]["extra_info"]["input_name"] == "sampler_name"


def test_interrupt_during_sampling(real_live: LiveServer, engine: FakeEngine) -> None:
    engine.gate.clear()
    with connect(real_live.ws("me")) as ws:
        recv(ws)
        prompt_id = submit(real_live, z_image_prompt(steps=20), "me").json()["prompt_id"]
        recv_until(ws, lambda f: isinstance(f, dict) and f["type"] == "progress", timeout=60)
        httpx.post(f"{real_live.http}/interrupt", json={"prompt_id": prompt_id}, timeout=30)
        engine.gate.set()
        frames = recv_until(ws, finished(prompt_id), timeout=60)
        assert "execution_interrupted" in events(frames)
        entry = wait_until(lambda: httpx.get(f"{real_live.http}/history/{prompt_id}", timeout=30).json())
        assert entry[prompt_id]["status"]["status_str"] == "error"
        jobs = httpx.get(f"{real_live.http}/api/jobs", timeout=30).json()["jobs"]
        assert jobs[0]["id"] == prompt_id and jobs[0]["status"] == "cancelled"
        follow = submit(real_live, z_image_prompt(seed=9), "me").json()["prompt_id"]
        assert "execution_success" in events(recv_until(ws, finished(follow), timeout=60))


def test_create_app_builds_the_real_executor_by_default(config: ServerConfig) -> None:
    app = create_app(config)
    state = app.state.zturbo
    assert isinstance(state.executor, executor_mod.PromptExecutor)
    assert state.registry is state.executor.registry
    assert state.executor.context.output_dir == config.output_dir
