"""`/internal/*` (the Logs panel, folder paths, file lists), `/v2/userdata`, `POST /users`, and the
ComfyUI details of `/system_stats`, `/view_metadata`, the favicon and template thumbnails."""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from zturbo.server import ServerConfig
from zturbo.server.web_mount import media_packages


def test_logs_come_from_the_servers_records(client: TestClient) -> None:
    logging.getLogger("zturbo.test").warning("a line for the Logs panel: 你好")
    raw = client.get("/internal/logs/raw").json()
    assert set(raw["size"]) == {"cols", "rows"}
    (entry,) = [e for e in raw["entries"] if "Logs panel" in e["m"]]
    assert entry["m"] == "WARNING zturbo.test: a line for the Logs panel: 你好\n"
    assert time.time() - time.mktime(time.strptime(entry["t"][:19], "%Y-%m-%dT%H:%M:%S")) < 60
    text = client.get("/comfy/internal/logs").json()
    assert f"{entry['t']} - {entry['m']}" in text


def test_subscribed_clients_get_logs_messages(client: TestClient) -> None:
    with client.websocket_connect("ws://127.0.0.1:8188/ws?clientId=viewer") as ws:
        assert json.loads(ws.receive_text())["type"] == "status"
        answer = client.patch("/internal/logs/subscribe", json={"clientId": "viewer", "enabled": True})
        assert answer.status_code == 200
        logging.getLogger("zturbo.test").warning("pushed to the panel")
        message = json.loads(ws.receive_text())
        assert message["type"] == "logs" and set(message["data"]["size"]) == {"cols", "rows"}
        assert message["data"]["entries"][0]["m"] == "WARNING zturbo.test: pushed to the panel\n"
        client.patch("/internal/logs/subscribe", json={"clientId": "viewer", "enabled": False})
        assert "viewer" not in client.app.state.zturbo.logs.subscribers
    assert client.patch("/internal/logs/subscribe", json={"enabled": True}).status_code == 400


def test_the_handler_leaves_with_the_app(config: ServerConfig, executor) -> None:
    from zturbo.server import create_app

    app = create_app(config, executor=executor)
    with TestClient(app, base_url="http://127.0.0.1:8188"):
        assert app.state.zturbo.logs in logging.getLogger().handlers
    assert app.state.zturbo.logs not in logging.getLogger().handlers


def test_folder_paths_and_files(client: TestClient, config: ServerConfig) -> None:
    folders = client.get("/internal/folder_paths").json()
    assert folders["vae"] == [str(config.models_dir / "vae")]
    assert str(config.models_dir / "unet") in folders["diffusion_models"]
    config.output_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["old.png", "new.png", ".hidden.png"]):
        (config.output_dir / name).write_bytes(b"x")
        os.utime(config.output_dir / name, (1_000_000 + i, 1_000_000 + i))
    (config.output_dir / "sub").mkdir()
    assert client.get("/internal/files/output").json() == ["new.png", "old.png"]
    assert client.get("/internal/files/input").json() == []
    bad = client.get("/internal/files/models")
    assert bad.status_code == 400 and bad.json() == {"error": "Invalid directory type"}


def test_v2_userdata_lists_folders_then_files(client: TestClient, config: ServerConfig) -> None:
    assert client.get("/v2/userdata").json() == []
    for name in ("workflows/b.json", "workflows/a.json", "workflows/deep/c.json", "user.css"):
        assert client.post(f"/userdata/{name.replace('/', '%2F')}", content=b"{}").status_code == 200
    listing = client.get("/api/v2/userdata", params={"path": "workflows"}).json()
    assert [(e["name"], e["type"], e["path"]) for e in listing] == [
        ("deep", "directory", "workflows/deep"),
        ("a.json", "file", "workflows/a.json"),
        ("b.json", "file", "workflows/b.json"),
        ("c.json", "file", "workflows/deep/c.json"),
    ]
    assert listing[1]["size"] == 2 and isinstance(listing[1]["modified"], float)
    assert client.get("/v2/userdata", params={"path": "nope"}).status_code == 404
    assert client.get("/v2/userdata", params={"path": "user.css"}).status_code == 400
    assert client.get("/v2/userdata", params={"path": "../.."}).status_code == 403


def test_post_users(client: TestClient, config: ServerConfig) -> None:
    user_id = client.post("/users", json={"username": "Zoë café"}).json()
    # ComfyUI's rule: runs of characters outside [a-zA-Z0-9-_] become one "-", then "_" and a UUID.
    assert user_id.startswith("Zo-caf-_") and len(user_id) == len("Zo-caf-_") + 36
    again = client.post("/users", json={"username": "Zoë café"})
    assert again.status_code == 400 and again.json() == {"error": "Duplicate username."}
    assert client.post("/users", json={"username": " "}).status_code == 400
    stored = json.loads((config.user_dir / "users.json").read_text(encoding="utf-8"))
    assert stored == {user_id: "Zoë café"}


def _safetensors(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def test_view_metadata_without_metadata_is_404(client: TestClient, config: ServerConfig) -> None:
    folder = config.models_dir / "vae"
    folder.mkdir(parents=True)
    (folder / "plain.safetensors").write_bytes(
        _safetensors({"w": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})
    )
    (folder / "meta.safetensors").write_bytes(_safetensors({"__metadata__": {"a": "b"}}))
    assert client.get("/view_metadata/vae", params={"filename": "plain.safetensors"}).status_code == 404
    assert client.get("/view_metadata/vae", params={"filename": "meta.safetensors"}).json() == {"a": "b"}


def test_system_stats_versions(client: TestClient) -> None:
    system = client.get("/system_stats").json()["system"]
    required = system["required_frontend_version"]
    assert len(required.split(".")) == 3 and all(p.isdigit() for p in required.split("."))
    served = tuple(int(p) for p in version("comfyui-frontend-package").split(".")[:3])
    assert tuple(int(p) for p in required.split(".")) <= served
    assert system["installed_templates_version"] == version("comfyui-workflow-templates")


def test_favicon_and_template_thumbnails(client: TestClient) -> None:
    for url in ("/assets/favicon.ico", "/comfy/assets/favicon.ico"):
        icon = client.get(url)
        assert icon.status_code == 200 and icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    if not media_packages():
        pytest.skip("no comfyui-workflow-templates-media-* package installed")
    index = client.get("/comfy/templates/index.json").json()
    z_image = [t for c in index for t in c["templates"] if t["name"].startswith("image_z_image")]
    assert len(z_image) >= 4
    for template in z_image:  # the URL the template browser builds: /templates/<name>-1.<subtype>
        thumb = client.get(f"/comfy/templates/{template['name']}-1.{template['mediaSubtype']}")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp", template["name"]
    assert client.get("/templates/../pyproject.toml").status_code == 404


def test_new_routes_keep_the_token_check(config: ServerConfig, executor, tmp_path: Path) -> None:
    from zturbo.server import create_app

    config.auth_token = "s3cret"
    with TestClient(create_app(config, executor=executor), base_url="http://127.0.0.1:8188") as client:
        for method, url in (
            ("GET", "/internal/logs/raw"),
            ("GET", "/internal/folder_paths"),
            ("GET", "/internal/files/output"),
            ("GET", "/v2/userdata"),
            ("POST", "/users"),
            ("PATCH", "/internal/logs/subscribe"),
        ):
            assert client.request(method, url).status_code == 401, url
            headers = {"Authorization": "Bearer s3cret"}
            assert client.request(method, url, headers=headers).status_code != 401, url
        evil = client.get(
            "/internal/logs/raw", headers={"Authorization": "Bearer s3cret", "Origin": "http://evil.example"}
        )
        assert evil.status_code == 403
