"""Each route's JSON shape, at `/X` and `/api/X`."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient

from server.conftest import wait_until
from server.doubles import FakeExecutor, save_prompt


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_get_prompt_shape(client: TestClient, prefix: str) -> None:
    assert client.get(f"{prefix}/prompt").json() == {"exec_info": {"queue_remaining": 0}}


def test_post_prompt_queues_and_runs(client: TestClient) -> None:
    response = client.post("/prompt", json={"prompt": save_prompt(), "client_id": "abc"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"prompt_id", "number", "node_errors"}
    assert str(uuid.UUID(body["prompt_id"])) == body["prompt_id"]
    entry = wait_until(lambda: client.get(f"/history/{body['prompt_id']}").json())
    item = entry[body["prompt_id"]]
    assert set(item) == {"prompt", "outputs", "status", "meta"}
    number, prompt_id, prompt, extra_data, outputs = item["prompt"]
    assert (prompt_id, prompt, outputs) == (body["prompt_id"], save_prompt(), ["9"])
    assert extra_data["client_id"] == "abc" and isinstance(extra_data["create_time"], int)
    assert item["status"]["status_str"] == "success" and item["status"]["completed"] is True
    assert [m[0] for m in item["status"]["messages"]][0] == "execution_start"
    image = item["outputs"]["9"]["images"][0]
    assert set(image) == {"filename", "subfolder", "type"}


def test_post_prompt_keeps_client_prompt_id_and_number(client: TestClient) -> None:
    prompt_id = str(uuid.uuid4())
    body = client.post(
        "/api/prompt", json={"prompt": save_prompt(), "prompt_id": prompt_id, "number": 7}
    ).json()
    assert body["prompt_id"] == prompt_id and body["number"] == 7


def test_queue_numbers_are_ints_as_in_comfyui(client: TestClient) -> None:
    """ComfyUI counts with an int (`float()` only a client's own `number`); strict clients check."""
    first = client.post("/prompt", json={"prompt": save_prompt(1)}).json()
    second = client.post("/prompt", json={"prompt": save_prompt(2), "front": True}).json()
    assert type(first["number"]) is int and type(second["number"]) is int
    assert second["number"] == -(first["number"] + 1)
    entry = wait_until(lambda: client.get(f"/history/{first['prompt_id']}").json())
    assert type(entry[first["prompt_id"]]["prompt"][0]) is int
    wait_until(lambda: client.get(f"/history/{second['prompt_id']}").json())
    jobs = client.get("/api/jobs").json()["jobs"]
    assert {type(job["priority"]) for job in jobs} == {int}


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({}, "no_prompt"),
        ({"prompt": [1, 2]}, "invalid_prompt"),
        ({"prompt": save_prompt(), "prompt_id": "not-a-uuid"}, "invalid_prompt_id"),
        ({"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}, "missing_node_type"),
        ({"prompt": {"1": {"class_type": "Slow", "inputs": {}}}}, "prompt_no_outputs"),
    ],
)
def test_post_prompt_errors_have_comfy_shape(client: TestClient, payload: dict, kind: str) -> None:
    response = client.post("/prompt", json=payload)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error", "node_errors"}
    assert body["error"]["type"] == kind
    assert {"type", "message", "details", "extra_info"} <= set(body["error"])


def test_partial_execution_targets_reach_validation(client: TestClient) -> None:
    payload = {"prompt": save_prompt(), "partial_execution_targets": ["1"]}
    assert client.post("/prompt", json=payload).json()["error"]["type"] == "prompt_no_outputs"


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_object_info(client: TestClient, prefix: str) -> None:
    info = client.get(f"{prefix}/object_info").json()
    assert info["SaveImage"]["output_node"] is True
    assert set(info["Slow"]) >= {
        "input",
        "input_order",
        "output",
        "output_is_list",
        "output_name",
        "name",
        "display_name",
        "description",
        "category",
        "output_node",
    }
    assert client.get(f"{prefix}/object_info/Slow").json() == {"Slow": info["Slow"]}
    assert client.get(f"{prefix}/object_info/Unknown").json() == {}


def test_system_stats_shape(client: TestClient) -> None:
    stats = client.get("/system_stats").json()
    assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version"} <= set(
        stats["system"]
    )
    device = stats["devices"][0]
    assert {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"} <= set(
        device
    )


def test_models_and_embeddings(client: TestClient, config) -> None:
    (config.models_dir / "diffusion_models" / "sub").mkdir(parents=True)
    (config.models_dir / "diffusion_models" / "sub" / "z.safetensors").write_bytes(b"x")
    (config.models_dir / "diffusion_models" / "notes.txt").write_text("not a model")
    (config.models_dir / "embeddings").mkdir()
    (config.models_dir / "embeddings" / "style.pt").write_bytes(b"x")
    folders = client.get("/models").json()
    assert "diffusion_models" in folders and "text_encoders" in folders
    assert client.get("/models/diffusion_models").json() == ["sub/z.safetensors"]
    assert client.get("/api/models/unet").json() == ["sub/z.safetensors"]
    assert client.get("/models/loras").json() == []
    assert client.get("/models/nope").status_code == 404
    assert client.get("/embeddings").json() == ["style"]


def test_extensions_features_free(client: TestClient, executor: FakeExecutor, config) -> None:
    assert client.get("/extensions").json() == []
    features = client.get("/features").json()
    assert features["max_upload_size"] == config.max_upload_bytes
    assert client.post("/free", json={"unload_models": True}).status_code == 200
    wait_until(lambda: executor.freed == [True])
    assert client.post("/api/free", json={"free_memory": True}).status_code == 200
    wait_until(lambda: executor.freed == [True, True])


def test_unknown_route_is_404(client: TestClient) -> None:
    assert client.get("/definitely/not/here").status_code == 404


def test_frontend_user_routes(client: TestClient, config) -> None:
    assert client.get("/api/users").json() == {"storage": "server", "migrated": True}
    assert client.get("/api/i18n").json() == {}
    assert client.get("/api/settings").json() == {}
    client.post("/api/settings", json={"Comfy.A": 1})
    client.post("/api/settings/Comfy.B", json="x")
    assert client.get("/api/settings").json() == {"Comfy.A": 1, "Comfy.B": "x"}
    assert client.get("/api/settings/Comfy.B").json() == "x"
    assert client.get("/api/userdata", params={"dir": "workflows"}).status_code == 404
    assert client.post("/api/userdata/workflows%2Fa.json", content=b'{"n": 1}').json() == "workflows/a.json"
    assert client.get("/api/userdata", params={"dir": "workflows"}).json() == ["a.json"]
    assert client.get("/api/userdata/workflows%2Fa.json").content == b'{"n": 1}'
    assert client.post("/api/userdata/workflows%2Fa.json?overwrite=false", content=b"{}").status_code == 409
    for bad in ("..%2F..%2Fx.json", "%2Fetc%2Fpasswd", "a%5Cb.json"):
        assert client.post(f"/api/userdata/{bad}", content=b"{}").status_code in (400, 403)
    assert client.delete("/api/userdata/workflows%2Fa.json").status_code == 204
    assert client.get("/api/userdata/workflows%2Fa.json").status_code == 404
    assert (config.user_dir / "default" / "comfy.settings.json").is_file()


def test_comfy_frontend_served_at_root(config, executor: FakeExecutor, tmp_path) -> None:
    from zturbo.server import create_app

    web = tmp_path / "frontend"
    web.mkdir()
    (web / "index.html").write_text("<html>comfy</html>")
    config.ui, config.comfy_frontend_dir = "comfy", web
    with TestClient(create_app(config, executor=executor), base_url="http://127.0.0.1:8188") as test_client:
        assert "comfy" in test_client.get("/").text
        assert test_client.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain;charset=UTF-8", "application/octet-stream"],
)
def test_prompt_body_is_json_whatever_its_label(client, content_type):
    """requests.post(data=...) sends no Content-Type, urllib a form type, aiohttp's raw bytes
    (comfy-catapult) application/octet-stream; ComfyUI accepts them all."""
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"prompt": save_prompt(1), "client_id": "x"}).encode()
    response = client.post("/prompt", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert "prompt_id" in response.json()
