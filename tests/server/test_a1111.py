"""AUTOMATIC1111's `/sdapi/v1`, driven as Open WebUI's A1111 backend drives it
(open-webui backend/open_webui/routers/images.py): `GET /options` for `sd_model_checkpoint`,
`GET /sd-models` (title, model_name), `POST /options` only when the model differs, then
`POST /txt2img` with {prompt, batch_size, width, height, steps[, negative_prompt]} and an
`authorization` header ('' without API auth, `Basic user:password` with it); it decodes each of
`images` as base64 PNG and keeps `info`. The images must be the files in /history and the gallery."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from server.conftest import LiveServer, history_entry_for, in_gallery, wait_until
from server.doubles import save_prompt
from zturbo.server import create_app


def open_webui_generate(base: str, prompt: str, auth: str = "", **form) -> dict:
    headers = {"authorization": auth}
    options = httpx.get(f"{base}/sdapi/v1/options", headers=headers, timeout=30).json()
    models = httpx.get(f"{base}/sdapi/v1/sd-models", headers=headers, timeout=30).json()
    listed = [{"id": m["title"], "name": m["model_name"]} for m in models]
    assert options["sd_model_checkpoint"] in [m["id"] for m in listed]
    if listed[0]["id"] != options["sd_model_checkpoint"]:
        options["sd_model_checkpoint"] = listed[0]["id"]
        httpx.post(f"{base}/sdapi/v1/options", json=options, headers=headers, timeout=30).raise_for_status()
    data = {"prompt": prompt, "batch_size": 1, "width": 64, "height": 64, **form}
    response = httpx.post(f"{base}/sdapi/v1/txt2img", json=data, headers=headers, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def decoded(image: str) -> bytes:
    return base64.b64decode(image)  # Open WebUI: no "data:" prefix → image/png


def saved_file(live: LiveServer, png: bytes) -> str:
    for entry in httpx.get(f"{live.http}/history", timeout=30).json().values():
        for out in entry["outputs"].values():
            for image in out.get("images", []):
                if httpx.get(f"{live.http}/view", params=image, timeout=30).content == png:
                    assert entry["prompt"][3]["zturbo_client"] == "a1111"
                    return image["filename"]
    raise AssertionError("the returned image is in no /history entry")


def test_open_webui_flow(real_live: LiveServer):
    res = open_webui_generate(real_live.http, "a watercolour fox, 水彩", steps=2, negative_prompt="")
    (image,) = res["images"]
    png = decoded(image)
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (64, 64)
    info = json.loads(res["info"])
    assert info["steps"] == 2 and info["width"] == 64 and info["cfg_scale"] == 1.0  # zturbo's default cfg
    assert info["infotexts"][0].startswith("a watercolour fox, 水彩\nNegative prompt: \nSteps: 2,")
    assert f"Seed: {info['seed']}," in info["infotexts"][0] and info["seed"] >= 0  # -1 drew a seed
    assert res["parameters"]["prompt"] == "a watercolour fox, 水彩"
    filename = saved_file(real_live, png)
    item = in_gallery(real_live, filename)
    assert item and (item["settings"]["steps"], item["settings"]["seed"]) == (2, info["seed"])


def test_txt2img_fields_and_n_iter(real_live: LiveServer):
    body = {
        "prompt": "p",
        "seed": 40,
        "sampler_name": "Euler a",
        "scheduler": "karras",
        "steps": 2,
        "cfg_scale": 1.5,
        "width": 32,
        "height": 48,
        "n_iter": 2,
    }
    res = httpx.post(f"{real_live.http}/sdapi/v1/txt2img", json=body, timeout=300).json()
    assert len(res["images"]) == 2
    info = json.loads(res["info"])
    assert info["all_seeds"] == [40, 41] and info["sampler_name"] == "Euler a"
    for image, seed in zip(res["images"], (40, 41), strict=True):
        with Image.open(io.BytesIO(decoded(image))) as img:
            assert img.size == (32, 48)
            graph = json.loads(img.text["prompt"])
        ks = next(n["inputs"] for n in graph.values() if n["class_type"] == "KSampler")
        assert (ks["seed"], ks["sampler_name"], ks["scheduler"], ks["cfg"]) == (
            seed,
            "euler_ancestral",
            "karras",
            1.5,
        )


def test_img2img_inpaint_keeps_unmasked_pixels(real_live: LiveServer):
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255  # A1111: white = repaint
    encoded = []
    for array in (original, mask):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    body = {
        "prompt": "a red wall",
        "init_images": ["data:image/png;base64," + encoded[0]],
        "mask": encoded[1],
        "denoising_strength": 1.0,
        "steps": 2,
        "seed": 3,
    }
    res = httpx.post(f"{real_live.http}/sdapi/v1/img2img", json=body, timeout=300).json()
    png = decoded(res["images"][0])
    with Image.open(io.BytesIO(png)) as img:
        out = np.asarray(img.convert("RGB"))
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[:, :16], original[:, :16])
    assert not np.array_equal(out[:, 40:], original[:, 40:])
    assert "init_images" not in res["parameters"]
    history_entry_for(real_live, saved_file(real_live, png))


def test_lists_and_bad_input(real_live: LiveServer):
    samplers = httpx.get(f"{real_live.http}/sdapi/v1/samplers", timeout=30).json()
    assert {"name": "Euler a", "aliases": ["euler_ancestral"], "options": {}} in samplers
    schedulers = [s["name"] for s in httpx.get(f"{real_live.http}/sdapi/v1/schedulers", timeout=30).json()]
    assert schedulers[0] == "automatic" and "simple" in schedulers
    bad = httpx.post(
        f"{real_live.http}/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "nope"}, timeout=30
    )
    assert bad.status_code == 400 and "unknown sampler 'nope'" in bad.json()["error"]["message"]
    bad = httpx.post(
        f"{real_live.http}/sdapi/v1/img2img", json={"prompt": "x", "init_images": ["@@"]}, timeout=30
    )
    assert bad.status_code == 400 and "init_images[0]" in bad.json()["error"]["message"]
    other = httpx.post(
        f"{real_live.http}/sdapi/v1/options", json={"sd_model_checkpoint": "sd15.ckpt"}, timeout=30
    )
    assert other.status_code == 400 and "sd15.ckpt" in other.json()["error"]["message"]


def test_progress_and_interrupt_on_the_shared_queue(client: TestClient, executor):
    executor.gate.clear()  # the job's Slow node reports 3/3 steps, then waits
    prompt_id = client.post("/prompt", json={"prompt": save_prompt(3)}).json()["prompt_id"]
    wait_until(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_steps"] == 3)
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 1.0 and progress["state"]["job_count"] == 1
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    wait_until(lambda: prompt_id in client.get("/history").json())
    assert client.get(f"/history/{prompt_id}").json()[prompt_id]["status"]["status_str"] == "error"
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0.0 and idle["state"]["job_count"] == 0


def test_open_webui_basic_auth_and_origin(config, executor):
    config.auth_token = "s3cret"
    with TestClient(create_app(config, executor=executor), base_url="http://127.0.0.1:8188") as test_client:
        assert test_client.get("/sdapi/v1/options", headers={"authorization": ""}).status_code == 401
        basic = "Basic " + base64.b64encode(b"zturbo:s3cret").decode()
        assert test_client.get("/sdapi/v1/options", headers={"authorization": basic}).status_code == 200
        wrong = "Basic " + base64.b64encode(b"zturbo:nope").decode()
        assert test_client.get("/sdapi/v1/options", headers={"authorization": wrong}).status_code == 401
        cross = test_client.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "x"},
            headers={"authorization": basic, "Origin": "http://evil.example"},
        )
        assert cross.status_code == 403


def test_field_translation():
    from zturbo.server import a1111

    body = a1111.parse(a1111.Txt2Img, {"prompt": "p", "enable_hr": True, "hr_scale": 1.5, "seed": 7})
    request = a1111.to_request(body, ["res_multistep", "euler"], ["simple"])
    assert (request.hires_scale, request.hires_steps, request.seed, request.steps) == (1.5, 5, 7, 8)
    plain = a1111.to_request(a1111.parse(a1111.Txt2Img, {"prompt": "p"}), ["res_multistep"], ["simple"])
    assert (plain.width, plain.cfg, plain.sampler, plain.hires_scale) == (1024, 1.0, "res_multistep", 1.0)
    assert a1111.comfy_sampler("dpm++ 2m", ["dpmpp_2m"]) == "dpmpp_2m"
