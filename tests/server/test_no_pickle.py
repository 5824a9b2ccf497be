"""No unpickling anywhere a client can reach: pickle files named as models (listed, so the refusal is
clear), disguised as safetensors, uploaded as images or dropped on the creator page. `pickle`,
`torch.load` and `numpy.load` are replaced by tripwires for the whole test, on the real engine."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from server.conftest import wait_until
from server.test_graph_integration import z_image_prompt
from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig, create_app

LOCAL = "http://127.0.0.1:8188"


class Payload:
    """Unpickling this creates the marker file: proof that something unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def tripwires(monkeypatch) -> list[str]:
    calls: list[str] = []

    def trip(name: str):
        def tripped(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called on user data")

        return tripped

    for module, name in (
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
        (np, "load"),
    ):
        monkeypatch.setattr(module, name, trip(f"{module.__name__}.{name}"))
    return calls


def test_pickles_are_never_unpickled(tiny_models: Path, tmp_path: Path, tripwires: list[str]) -> None:
    marker = tmp_path / "UNPICKLED"
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    evil = pickle.dumps({"state_dict": Payload(marker)})
    for name in ("evil.ckpt", "evil.pt", "evil.pth", "evil.bin", "evil.pkl"):
        (models / "diffusion_models" / name).write_bytes(evil)
    zipped = tmp_path / "zipped.pt"
    torch.save({"w": Payload(marker)}, zipped)  # torch.save itself pickles; only loading is refused
    shutil.copy(zipped, models / "diffusion_models" / "disguised.safetensors")
    config = ServerConfig(
        models_dir=models,
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        engine=EngineSettings("cpu", vram="auto"),
        max_upload_bytes=4 * 2**20,
    )
    with TestClient(create_app(config), base_url=LOCAL) as client:
        listed = client.get("/models/diffusion_models").json()
        assert {"evil.ckpt", "disguised.safetensors"} <= set(listed)
        for name in ("evil.ckpt", "evil.pt", "evil.pth", "evil.bin", "evil.pkl", "disguised.safetensors"):
            prompt = z_image_prompt()
            prompt["1"]["inputs"]["unet_name"] = name
            response = client.post("/prompt", json={"prompt": prompt})
            assert response.status_code == 200, response.text
            prompt_id = response.json()["prompt_id"]
            entry = wait_until(lambda pid=prompt_id: client.get(f"/history/{pid}").json(), timeout=120)[
                prompt_id
            ]
            error = entry["status"]["messages"][-1][1]
            assert entry["status"]["status_str"] == "error" and "pickle" in error["exception_message"], error
            meta = client.get("/view_metadata/diffusion_models", params={"filename": name})
            assert meta.status_code in (200, 404) and meta.status_code < 500
        for route, field in (("/upload/image", "image"), ("/zturbo/inspect", "file")):
            response = client.post(route, files={field: ("x.png", evil, "image/png")})
            assert response.status_code == 400, (route, response.text)
        assert client.post("/api/userdata/evil.ckpt", content=evil).status_code == 200
        assert client.get("/api/userdata/evil.ckpt").content == evil  # stored and served as bytes only
    assert tripwires == [] and not marker.exists()
