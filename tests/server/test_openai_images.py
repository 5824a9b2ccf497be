"""The OpenAI images API, driven by the official `openai` package against the real engine (tiny
models): the image comes back, is the file in `/history` and the gallery, and errors arrive in
OpenAI's shape as the client's own exception classes."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from server.conftest import LiveServer, history_entry_for, in_gallery
from zturbo.server import create_app

openai = pytest.importorskip("openai")


def client(live: LiveServer, key: str = "dummy"):
    return openai.OpenAI(base_url=f"{live.http}/v1", api_key=key, max_retries=0)


def find_by_bytes(live: LiveServer, png: bytes) -> tuple[str, dict]:
    """The history entry whose image /view serves with exactly these bytes."""
    for entry in httpx.get(f"{live.http}/history", timeout=30).json().values():
        for out in entry["outputs"].values():
            for image in out.get("images", []):
                if httpx.get(f"{live.http}/view", params=image, timeout=30).content == png:
                    return image["filename"], entry
    raise AssertionError("the returned image is in no /history entry")


def test_generate_b64_with_extra_fields(real_live: LiveServer):
    result = client(real_live).images.generate(
        prompt="一只红色的狐狸 in snow",
        n=1,
        size="64x48",
        response_format="b64_json",
        extra_body={"seed": 1234, "steps": 2},
    )
    png = base64.b64decode(result.data[0].b64_json)
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (64, 48)
        graph = json.loads(img.text["prompt"])
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "KSampler")
    assert (sampler["seed"], sampler["steps"]) == (1234, 2)
    assert result.data[0].revised_prompt == "一只红色的狐狸 in snow"
    filename, entry = find_by_bytes(real_live, png)
    assert entry["prompt"][3]["zturbo_client"] == "openai"
    item = in_gallery(real_live, filename)
    assert item and (item["settings"]["prompt"], item["settings"]["seed"]) == ("一只红色的狐狸 in snow", 1234)


def test_generate_url_serves_the_saved_file(real_live: LiveServer):
    result = client(real_live).images.generate(
        prompt="a lighthouse", n=2, size="32x32", response_format="url", extra_body={"steps": 1}
    )
    assert len(result.data) == 2
    for item in result.data:
        png = httpx.get(item.url, timeout=30).content
        filename = item.url.split("filename=")[1].split("&")[0]
        history_entry_for(real_live, filename)
        with Image.open(io.BytesIO(png)) as img:
            assert img.size == (32, 32)


def test_edit_with_mask_keeps_the_opaque_part(real_live: LiveServer):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.full((64, 64, 4), 255, dtype=np.uint8)
    mask[:, 32:, 3] = 0  # OpenAI's rule: transparent = edit the right half
    files = []
    for array in (original, mask):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    result = client(real_live).images.edit(
        image=("photo.png", files[0], "image/png"),
        mask=("mask.png", files[1], "image/png"),
        prompt="a blue square",
        response_format="b64_json",
        extra_body={"steps": 2, "seed": 5},
    )
    png = base64.b64decode(result.data[0].b64_json)
    with Image.open(io.BytesIO(png)) as img:
        edited = np.asarray(img.convert("RGB"))
    # Left of the grown (8 px) and blurred (4 px) mask edge the original is pasted back unchanged.
    assert np.array_equal(edited[:, :16], original[:, :16])
    assert not np.array_equal(edited[:, 40:], original[:, 40:])
    filename, entry = find_by_bytes(real_live, png)
    assert in_gallery(real_live, filename)


def test_models_lists_the_diffusion_model(real_live: LiveServer):
    ids = [m.id for m in client(real_live).models.list()]
    assert ids and all(i.endswith((".safetensors", ".gguf")) for i in ids)


def test_errors_in_openai_shape(real_live: LiveServer):
    with pytest.raises(openai.BadRequestError) as info:
        client(real_live).images.generate(prompt="x", size="65x64")
    assert "width must be a multiple of 16" in info.value.message
    assert info.value.body["type"] == "invalid_request_error"
    response = httpx.post(f"{real_live.http}/v1/images/generations", json={"n": 1}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["message"].startswith("prompt")


def test_token_and_origin_rules_apply(config, executor):
    from fastapi.testclient import TestClient

    config.auth_token = "s3cret"
    app = create_app(config, executor=executor)
    with TestClient(app, base_url="http://127.0.0.1:8188") as test_client:
        refused = test_client.get("/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        ok = test_client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["object"] == "list"
        cross = test_client.post(
            "/v1/images/generations",
            json={"prompt": "x"},
            headers={"Authorization": "Bearer s3cret", "Origin": "http://evil.example"},
        )
        assert cross.status_code == 403


def test_wrong_key_is_the_clients_authentication_error(config, executor):
    from server.conftest import run_live

    config.auth_token = "s3cret"
    for live in run_live(create_app(config, executor=executor)):
        with pytest.raises(openai.AuthenticationError) as info:
            client(live, key="wrong").models.list()
        assert "missing or invalid auth token" in info.value.message
        assert client(live, key="s3cret").models.list().data == []
