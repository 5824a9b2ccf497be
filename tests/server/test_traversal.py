"""A traversal corpus on every route and node input that takes a path: `/view`, `/upload/image`,
`/upload/mask`, `/userdata` (get, post, delete, move, list), `/zturbo/outputs/delete`,
`/view_metadata`, the model lists, and in prompts SaveImage prefixes, LoadImage names and loader names
(absolute, `..` in every spelling, drives, UNC, NUL, hidden, symlinks placed inside pointing out).
Every attempt must be refused, nothing outside the folders read or written. Symlinked *model files*
are allowed on purpose (shared model stores: the user put them there)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.conftest import wait_until
from server.test_graph_integration import z_image_prompt
from server.test_prompt_limits import real_executor
from zturbo.server import ServerConfig, create_app

LOCAL = "http://127.0.0.1:8188"
SECRET = b"TOP-SECRET-BYTES"
NAMES = [
    "../secret.png",
    "../../secret.png",
    "..\\secret.png",
    "..%2fsecret.png",
    "%2e%2e%2fsecret.png",
    "%252e%252e%252fsecret.png",
    "..%5csecret.png",
    "....//secret.png",
    "sub/../../secret.png",
    "/etc/passwd",
    "/tmp/secret.png",
    "C:secret.png",
    "C:\\Windows\\win.ini",
    "\\\\server\\share\\x.png",
    "secret.png\x00.png",
    ".zturbo/zturbo.sqlite3",
    "../.zturbo/zturbo.sqlite3",
    "out-link/secret.png",
    "in-link.png",
    "..",
    ".",
    "x/./../../secret.png",
]
SUBFOLDERS = [
    "..",
    "../..",
    "a/../..",
    "/etc",
    "/tmp",
    "C:\\",
    "\\\\server\\share",
    "%2e%2e",
    ".zturbo",
    "out-link",
    "in-dir-link",
]
COUNTS = {"attempts": 0, "refused": 0, "kept_inside": 0}


@pytest.fixture
def world(config: ServerConfig, tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    """The server, plus a folder outside every root holding a secret and symlinks into it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "secret.png")
    (outside / "secret.png").write_bytes((outside / "secret.png").read_bytes() + SECRET)
    config.max_request_bytes = 4 * 2**20
    with TestClient(create_app(config, executor=real_executor(config)), base_url=LOCAL) as client:
        (config.output_dir / "out-link").symlink_to(outside, target_is_directory=True)
        (config.input_dir / "in-link.png").symlink_to(outside / "secret.png")
        (config.input_dir / "in-dir-link").symlink_to(outside, target_is_directory=True)
        (config.user_dir / "default").mkdir(parents=True, exist_ok=True)
        (config.user_dir / "default" / "u-link").symlink_to(outside, target_is_directory=True)
        for folder, name in (
            ("diffusion_models", "z_image_turbo_bf16.safetensors"),
            ("text_encoders", "qwen_3_4b.safetensors"),
            ("vae", "ae.safetensors"),
        ):
            (config.models_dir / folder).mkdir(parents=True, exist_ok=True)
            (config.models_dir / folder / name).write_bytes(b"")
        Image.new("RGB", (4, 4)).save(config.input_dir / "ok.png")
        before = sorted(p.name for p in outside.iterdir())
        yield client, outside
        assert sorted(p.name for p in outside.iterdir()) == before, "something was written outside"


def refused(response, what: str, allowed: tuple[int, ...] = (400, 403, 404, 405, 409, 413, 422)) -> None:
    COUNTS["attempts"] += 1
    assert response.status_code in allowed, (what, response.status_code, response.text[:200])
    assert SECRET not in response.content and b"SQLite format" not in response.content, what
    COUNTS["refused"] += 1


def refused_upload(response, root: Path, what: str) -> None:
    """Refused, or (a Windows path the multipart parser cut to its last part, as browsers send
    names) stored under that plain name inside its folder."""
    if response.status_code != 200:
        refused(response, what)
        return
    COUNTS["attempts"] += 1
    name = response.json()["name"]
    assert "/" not in name and "\\" not in name and not name.startswith("."), (what, name)
    assert (root / response.json()["subfolder"] / name).is_file(), what
    COUNTS["kept_inside"] += 1


def kept_inside(response, root: Path, what: str) -> None:
    """Refused, or a plain name (e.g. `in-link.png`, which is no link in the user folder) written there."""
    if response.status_code != 200:
        refused(response, what)
        return
    COUNTS["attempts"] += 1
    path = (root / response.json()).resolve()
    assert root.resolve() in path.parents and path.is_file(), (what, response.text)
    COUNTS["kept_inside"] += 1


def png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


def test_file_routes(world, config: ServerConfig) -> None:
    client, outside = world
    for name in NAMES:
        for kind in ("output", "input", "temp"):
            refused(client.get("/view", params={"filename": name, "type": kind}), f"view {name}")
            refused(client.get("/view", params={"filename": f"{name} [{kind}]"}), f"view annotated {name}")
        files = {"image": (name, png(), "image/png")}
        response = client.post("/upload/image", files=files, data={"overwrite": "true"})
        refused_upload(response, config.input_dir, f"upload {name}")
        ref = json.dumps({"filename": name, "type": "input"})
        refused(
            client.post(
                "/upload/mask", files={"image": ("m.png", png(), "image/png")}, data={"original_ref": ref}
            ),
            f"mask {name}",
        )
        refused(client.post("/zturbo/outputs/delete", json={"filename": name}), f"delete {name}")
        encoded = quote(name, safe="%")
        for method in ("GET", "DELETE"):
            refused(client.request(method, f"/api/userdata/{encoded}"), f"userdata {method} {name}")
        user_root = config.user_dir / "default"
        kept_inside(
            client.post(f"/api/userdata/{encoded}", content=b"{}"), user_root, f"userdata POST {name}"
        )
        client.post("/api/userdata/ok.json", content=b"{}")
        kept_inside(
            client.post(f"/api/userdata/ok.json/move/{encoded}"), user_root, f"userdata move to {name}"
        )
        refused(
            client.get("/api/view_metadata/diffusion_models", params={"filename": name + ".safetensors"}),
            f"metadata {name}",
        )
    for sub in SUBFOLDERS:
        for kind in ("output", "input", "temp"):
            refused(
                client.get("/view", params={"filename": "secret.png", "subfolder": sub, "type": kind}),
                f"view sub {sub}",
            )
            files = {"image": ("new.png", png(), "image/png")}
            folders = {"output": config.output_dir, "input": config.input_dir, "temp": config.temp_dir}
            refused_upload(
                client.post("/upload/image", files=files, data={"subfolder": sub, "type": kind}),
                folders[kind],
                f"upload sub {sub}",
            )
        refused(
            client.post("/zturbo/outputs/delete", json={"filename": "secret.png", "subfolder": sub}),
            f"delete sub {sub}",
        )
        listing = client.get("/api/userdata", params={"dir": sub, "recurse": True})
        if listing.status_code == 200:  # a plain folder of that name that an earlier attempt made inside
            COUNTS["attempts"] += 1
            assert (config.user_dir / "default").resolve() in (
                config.user_dir / "default" / sub
            ).resolve().parents
            COUNTS["kept_inside"] += 1
        else:
            refused(listing, f"userdata list {sub}")
        kept_inside(
            client.post(f"/api/userdata/{sub.replace('/', '%2F')}%2Fx.json", content=b"{}"),
            config.user_dir / "default",
            f"userdata sub {sub}",
        )
    refused(client.get("/api/userdata/u-link%2Fsecret.png"), "userdata through a symlink")
    refused(client.post("/api/userdata/u-link%2Fnew.json", content=b"{}"), "userdata write through a symlink")
    for folder in ("..%2F..", "%2e%2e", "%2Fetc", ".zturbo"):
        refused(client.get(f"/models/{folder}"), f"models {folder}")
        refused(client.get(f"/api/experiment/models/{folder}"), f"experiment models {folder}")


def run(client: TestClient, prompt: dict) -> tuple[int, dict]:
    response = client.post("/prompt", json={"prompt": prompt})
    if response.status_code != 200:
        return response.status_code, response.json()
    prompt_id = response.json()["prompt_id"]
    return 200, wait_until(lambda: client.get(f"/history/{prompt_id}").json(), timeout=60)[prompt_id]


def refused_prompt(status: int, body: dict, what: str, output_dir: Path) -> None:
    """Refused at validation (400), or failed by the node; or, for a name that is only odd as text
    (`..%2f` is three characters in a file name, not a separator), saved inside the output folder."""
    COUNTS["attempts"] += 1
    assert SECRET.decode() not in json.dumps(body), what
    if status != 200:
        assert status == 400, (what, status)
        COUNTS["refused"] += 1
    elif body["status"]["status_str"] == "error":
        COUNTS["refused"] += 1
    else:
        for node in body["outputs"].values():
            for image in node.get("images", []):
                path = (output_dir / image["subfolder"] / image["filename"]).resolve()
                assert output_dir.resolve() in path.parents and path.is_file(), (what, image)
        COUNTS["kept_inside"] += 1


def test_node_inputs(world, config: ServerConfig) -> None:
    client, outside = world
    for name in [*NAMES, "out-link/x", "in-dir-link/x", "%date:yyyy%/../../x"]:
        prompt = z_image_prompt()
        prompt["10"]["inputs"]["filename_prefix"] = name
        refused_prompt(*run(client, prompt), f"SaveImage prefix {name}", config.output_dir)
    for name in NAMES:
        load = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        }
        refused_prompt(*run(client, load), f"LoadImage {name}", config.output_dir)
        for node, field in (("1", "unet_name"), ("2", "clip_name"), ("3", "vae_name")):
            prompt = z_image_prompt()
            prompt[node]["inputs"][field] = name.replace("secret.png", "secret.safetensors")
            refused_prompt(*run(client, prompt), f"{field} {name}", config.output_dir)
    status, entry = run(client, z_image_prompt())  # and a good prompt still runs
    assert status == 200 and entry["status"]["status_str"] == "success"


def test_report(tmp_path_factory) -> None:
    """Written for RELIABILITY.md (run with the other tests of this module)."""
    if COUNTS["attempts"]:
        assert COUNTS["refused"] + COUNTS["kept_inside"] == COUNTS["attempts"]
        print("traversal:", COUNTS)
