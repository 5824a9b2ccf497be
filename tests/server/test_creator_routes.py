"""The creator page's routes (`/zturbo/...`) on the real executor and engine with tiny models (CPU)."""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from zturbo.output.metadata import ModelFiles, api_graph, parameters_text
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig, create_app

MODELS = ModelFiles("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors")
TEMPLATE = "comfyui_workflow_templates_json/templates/image_z_image_turbo.json"


@pytest.fixture
def real_config(tmp_path: Path, tiny_models: Path) -> ServerConfig:
    shutil.copytree(tiny_models, tmp_path / "models")
    return ServerConfig(
        models_dir=tmp_path / "models",
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
        user_dir=tmp_path / "user",
        engine=EngineSettings("cpu", vram="auto"),
    )


@pytest.fixture
def real(real_config: ServerConfig) -> Iterator[TestClient]:
    with TestClient(create_app(real_config), base_url="http://127.0.0.1:8188") as client:
        yield client


def png_bytes(**chunks: str) -> bytes:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def inspect(client: TestClient, data: bytes, name: str = "f.png") -> dict:
    response = client.post("/zturbo/inspect", files={"file": (name, data)})
    assert response.status_code == 200, response.text
    return response.json()


def run_to_history(client: TestClient, settings: dict) -> dict:
    graph = client.post("/zturbo/graph", json={"settings": settings}).json()["prompt"]
    prompt_id = client.post("/prompt", json={"prompt": graph, "client_id": "t"}).json()["prompt_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        entry = client.get(f"/history/{prompt_id}").json()
        if entry:
            return entry[prompt_id]
        time.sleep(0.1)
    raise AssertionError("the prompt did not finish")


def test_graph_is_the_metadata_graph(real: TestClient) -> None:
    settings = {"prompt": "a fox", "negative": "blur", "width": 1280, "height": 720, "cfg": 2.0, "seed": 9}
    response = real.post("/zturbo/graph", json={"settings": settings, "filename_prefix": "covers/blog"})
    assert response.status_code == 200, response.text
    expected = api_graph(GenerationRequest(**settings), MODELS, filename_prefix="covers/blog")
    assert response.json()["prompt"] == expected


@pytest.mark.parametrize(
    ("change", "words"),
    [({"width": 100}, "multiple of 16"), ({"sampler": "nope"}, "unknown sampler"), ({"steps": 0}, "steps")],
)
def test_graph_rejects_bad_settings(real: TestClient, change: dict, words: str) -> None:
    response = real.post("/zturbo/graph", json={"settings": {"prompt": "x", **change}})
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_inspect_png_parameters(real: TestClient) -> None:
    request = GenerationRequest(prompt="a boat", negative="fog", width=640, height=384, cfg=2.5, seed=5)
    found = inspect(real, png_bytes(parameters=parameters_text(request, MODELS)))
    assert found["settings"]["prompt"] == "a boat" and found["settings"]["cfg"] == 2.5
    assert found["prompt"] == api_graph(request, MODELS)


def test_inspect_comfyui_png_and_workflow_json(real: TestClient) -> None:
    request = GenerationRequest(prompt="a kite", width=64, height=64, seed=3)
    found = inspect(real, png_bytes(prompt=json.dumps(api_graph(request, MODELS))))
    assert found["settings"]["seed"] == 3 and found["workflow"] is None

    template = Path(pytest.importorskip("comfyui_workflow_templates_json").__file__).parents[1] / TEMPLATE
    found = inspect(real, template.read_bytes(), "template.json")
    assert found["kind"] == "json" and found["workflow"]["nodes"]
    assert {n["class_type"] for n in found["prompt"].values()} >= {"KSampler", "SaveImage"}
    assert found["settings"]["prompt"].startswith("Latina female")
    assert (found["settings"]["width"], found["settings"]["steps"]) == (1024, 8)


def test_inspect_refuses_other_files(real: TestClient) -> None:
    assert real.post("/zturbo/inspect", files={"file": ("a.bin", b"\xff\xfe\x00")}).status_code == 400
    assert real.post("/zturbo/inspect", files={"file": ("a.json", b'{"a": 1}')}).status_code == 400
    found = inspect(real, png_bytes())
    assert found["settings"] is None and found["prompt"] is None and found["notes"]


def test_gallery_and_delete(real: TestClient, real_config: ServerConfig) -> None:
    entry = run_to_history(real, {"prompt": "a tiny moon", "width": 64, "height": 64, "steps": 2, "seed": 11})
    assert entry["status"]["status_str"] == "success"
    (item,) = real.get("/zturbo/gallery").json()["items"]
    assert item["settings"]["prompt"] == "a tiny moon" and item["settings"]["seed"] == 11
    filename = item["image"]["filename"]
    assert (real_config.output_dir / filename).is_file()

    for bad in ("../history.sqlite3", "/etc/passwd", "a/b.png"):
        assert real.post("/zturbo/outputs/delete", json={"filename": bad}).status_code in (400, 403)
    assert real.post("/zturbo/outputs/delete", json={"filename": "nope.png"}).status_code == 404
    deleted = real.post("/zturbo/outputs/delete", json={"filename": filename}).json()
    assert deleted["history_deleted"] is True
    assert not (real_config.output_dir / filename).exists()
    assert real.get("/zturbo/gallery").json()["items"] == []
    assert real.get("/history").json() == {}


def test_presets(real: TestClient, real_config: ServerConfig) -> None:
    presets = real.get("/zturbo/presets").json()["presets"]
    assert {"blog-cover", "tutorial-thumbnail", "poster-with-text"} <= {p["id"] for p in presets}
    assert all("{subject}" in p["template"] and p["builtin"] for p in presets)

    mine = {"name": "My Sticker", "template": "sticker of {subject}", "width": 512, "height": 512}
    assert real.post("/zturbo/presets", json=mine).json()["id"] == "my-sticker"
    assert real.post("/zturbo/presets", json={**mine, "template": "sticker: {subject}"}).status_code == 200
    stored = json.loads((real_config.user_dir / "default" / "zturbo.presets.json").read_text())
    assert stored["presets"] == [{**mine, "template": "sticker: {subject}", "negative": ""}]

    assert real.post("/zturbo/presets", json={"name": "x", "template": "no slot"}).status_code == 422
    assert real.post("/zturbo/presets", json={**mine, "width": 100}).status_code == 422
    assert real.post("/zturbo/presets", json={**mine, "name": "Blog cover"}).status_code == 400
    assert real.delete("/zturbo/presets/blog-cover").status_code == 400
    assert real.delete("/zturbo/presets/my-sticker").status_code == 204
    assert real.delete("/zturbo/presets/my-sticker").status_code == 404
    assert [p for p in real.get("/zturbo/presets").json()["presets"] if not p["builtin"]] == []


def test_models_panel_and_offline_download(
    real: TestClient, real_config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    panel = real.get("/zturbo/models").json()
    assert panel["missing"] == [] and all(c["present"] for c in panel["components"])
    (real_config.models_dir / "vae" / "ae.safetensors").unlink()
    panel = real.get("/zturbo/models").json()
    assert panel["missing"] == ["vae/ae.safetensors"]

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    assert real.post("/zturbo/models/download").json()["files"] == ["vae/ae.safetensors"]
    deadline = time.monotonic() + 30
    while (status := real.get("/zturbo/models/download").json())["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["state"] == "error" and "Are you offline?" in status["error"]


def test_graph_warns_of_a_negative_at_cfg1(real: TestClient) -> None:
    settings = {"prompt": "x", "negative": "blurry"}
    warned = real.post("/zturbo/graph", json={"settings": settings}).json()["warnings"]
    assert any("negative prompt does nothing at cfg 1" in w for w in warned)
    settings["cfg"] = 4.0  # the models folder holds the standard Turbo file name: now that warning
    warned = real.post("/zturbo/graph", json={"settings": settings}).json()["warnings"]
    assert len(warned) == 1 and "Turbo is distilled for cfg 1" in warned[0]
    assert real.post("/zturbo/graph", json={"settings": {"prompt": "x"}}).json()["warnings"] == []
