"""Static UIs and the routes the real ComfyUI frontend needs, on the test-double executor."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from server.doubles import FakeExecutor
from zturbo.server import ServerConfig, create_app
from zturbo.server.downloads import ModelDownloads


def test_creator_at_root_and_comfy_frontend_at_comfy(client: TestClient) -> None:
    root = client.get("/")
    assert root.status_code == 200 and 'id="create-form"' in root.text
    assert (
        client.get("/js/main.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    assert client.get("/comfy", follow_redirects=False).headers["location"] == "/comfy/"
    comfy = client.get("/comfy/")
    assert comfy.status_code == 200 and "<title>ComfyUI</title>" in comfy.text
    assert client.get("/assets/images/favicon_progress_16x16/frame_0.png").status_code == 200


def test_frontend_api_base_under_comfy(client: TestClient) -> None:
    """Served at /comfy/, the frontend calls /comfy/api/... and /comfy/ws."""
    assert client.get("/comfy/api/object_info").json() == client.get("/api/object_info").json()
    assert client.get("/comfy/api/users").json() == {"storage": "server", "migrated": True}
    with client.websocket_connect("ws://127.0.0.1:8188/comfy/ws?clientId=abc") as ws:
        assert json.loads(ws.receive_text())["data"]["sid"] == "abc"


def test_ui_comfy_puts_the_editor_at_root(config: ServerConfig, executor: FakeExecutor) -> None:
    config.ui = "comfy"
    with TestClient(create_app(config, executor=executor), base_url="http://127.0.0.1:8188") as client:
        assert "<title>ComfyUI</title>" in client.get("/").text
        assert 'id="create-form"' in client.get("/creator/").text


def test_frontend_startup_routes(client: TestClient, config: ServerConfig) -> None:
    assert client.get("/api/global_subgraphs").json() == {}
    assert client.get("/api/global_subgraphs/x").status_code == 404
    assert client.get("/api/workflow_templates").json() == {}
    assert client.get("/api/node_replacements").json() == {}
    folders = client.get("/api/experiment/models").json()
    assert {"name": "diffusion_models", "folders": [str(config.models_dir / "diffusion_models")]} in folders
    (config.models_dir / "unet").mkdir(parents=True)
    (config.models_dir / "unet" / "m.safetensors").write_bytes(_safetensors({"note": "hi"}))
    assert client.get("/api/experiment/models/diffusion_models").json() == [
        {"name": "m.safetensors", "pathIndex": 0}
    ]
    assert client.get("/api/experiment/models/nope").status_code == 404
    meta = client.get("/api/view_metadata/diffusion_models", params={"filename": "m.safetensors"})
    assert meta.json() == {"note": "hi"}
    assert client.get("/api/view_metadata/vae", params={"filename": "../x.safetensors"}).status_code in (
        400,
        403,
    )


def test_settings_without_json_content_type(client: TestClient, config: ServerConfig) -> None:
    """The frontend posts settings as text bodies; ComfyUI parses them as JSON all the same."""
    assert client.post("/api/settings/Comfy.TutorialCompleted", content=b"true").status_code == 200
    assert client.post("/api/settings", content=b'{"Comfy.Locale": "en"}').status_code == 200
    assert client.get("/api/settings").json() == {"Comfy.TutorialCompleted": True, "Comfy.Locale": "en"}
    assert client.post("/api/settings/x", content=b"{nope").status_code == 400


def test_userdata_move_and_full_info(client: TestClient) -> None:
    saved = client.post("/api/userdata/workflows%2Fa.json?full_info=true", content=b"{}").json()
    assert saved["path"] == "workflows/a.json" and saved["size"] == 2
    moved = client.post("/api/userdata/workflows%2Fa.json/move/workflows%2Fb.json")
    assert moved.status_code == 200 and moved.json() == "workflows/b.json"
    assert client.get("/api/userdata/workflows%2Fb.json").content == b"{}"
    assert client.get("/api/userdata/workflows%2Fa.json").status_code == 404
    client.post("/api/userdata/workflows%2Fc.json", content=b"[]")
    assert client.post("/api/userdata/workflows%2Fc.json/move/workflows%2Fb.json").status_code == 409


def test_model_download_progress(tmp_path: Path) -> None:
    """Progress counts the bytes that have arrived; a fake pull writes the file in two steps."""
    gate = threading.Event()

    def pull(models_dir: Path, names: list[str]) -> None:
        partial = models_dir / ".zturbo" / "download" / ".cache" / "x.incomplete"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"\0" * 40)
        gate.wait(10)
        (models_dir / "vae").mkdir()
        partial.rename(models_dir / "vae" / "ae.safetensors")

    downloads = ModelDownloads(tmp_path, pull=pull, sizes=lambda names: {"vae/ae.safetensors": 100})
    assert downloads.start(["vae/ae.safetensors"])["state"] == "running"
    deadline = time.monotonic() + 10
    while downloads.status()["bytes_done"] != 40:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert downloads.status()["bytes_total"] == 100
    assert downloads.start()["state"] == "running"  # a second start joins the running one
    gate.set()
    while downloads.status()["state"] == "running":
        time.sleep(0.01)
    assert downloads.status()["state"] == "done"


def _safetensors(metadata: dict) -> bytes:
    header = json.dumps({"__metadata__": metadata}).encode()
    return struct.pack("<Q", len(header)) + header
