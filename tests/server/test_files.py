"""`/view` and `/upload/image`: shapes, ComfyUI's clash naming, and no way out of the folders."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zturbo.server import ServerConfig


def png(color: tuple[int, int, int, int] = (10, 20, 30, 128), size: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def upload(client: TestClient, name: str, data: bytes, **form: str):
    return client.post("/upload/image", files={"image": (name, data, "image/png")}, data=form)


def test_view_output_input_temp_and_annotated(client: TestClient, config: ServerConfig) -> None:
    (config.output_dir / "sub").mkdir()
    (config.output_dir / "sub" / "a.png").write_bytes(png())
    (config.input_dir / "b.png").write_bytes(png())
    (config.temp_dir / "c.png").write_bytes(png())
    r = client.get("/view", params={"filename": "a.png", "subfolder": "sub", "type": "output"})
    assert r.status_code == 200 and r.content == png() and r.headers["content-type"] == "image/png"
    assert 'filename="a.png"' in r.headers["content-disposition"]
    assert client.get("/api/view", params={"filename": "b.png", "type": "input"}).content == png()
    assert client.get("/view", params={"filename": "c.png [temp]"}).content == png()
    assert client.get("/view", params={"filename": "c.png[temp]"}).status_code == 404  # ComfyUI: one space
    assert client.get("/view", params={"filename": "nope.png"}).status_code == 404
    assert client.get("/view").status_code == 404
    assert client.get("/view", params={"filename": "a.png", "type": "models"}).status_code == 400


def test_view_preview_and_channels(client: TestClient, config: ServerConfig) -> None:
    (config.output_dir / "a.png").write_bytes(png())
    r = client.get("/view", params={"filename": "a.png", "preview": "jpeg;50"})
    assert r.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(r.content)).format == "JPEG"
    r = client.get("/view", params={"filename": "a.png", "preview": "webp;90"})
    assert Image.open(io.BytesIO(r.content)).format == "WEBP"
    rgb = Image.open(io.BytesIO(client.get("/view", params={"filename": "a.png", "channel": "rgb"}).content))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (10, 20, 30)
    alpha = Image.open(io.BytesIO(client.get("/view", params={"filename": "a.png", "channel": "a"}).content))
    assert alpha.mode == "RGBA" and alpha.getpixel((0, 0))[3] == 128


def test_view_serves_active_content_as_download(client: TestClient, config: ServerConfig) -> None:
    (config.output_dir / "x.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>")
    r = client.get("/view", params={"filename": "x.svg"})
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment")


def test_upload_shape_clash_duplicate_and_overwrite(client: TestClient, config: ServerConfig) -> None:
    r = upload(client, "cat.png", png())
    assert r.status_code == 200 and r.json() == {"name": "cat.png", "subfolder": "", "type": "input"}
    assert upload(client, "cat.png", png()).json()["name"] == "cat.png"  # identical: no copy
    assert upload(client, "cat.png", png((1, 1, 1, 255))).json()["name"] == "cat (1).png"
    assert upload(client, "cat.png", png((2, 2, 2, 255))).json()["name"] == "cat (2).png"
    r = upload(client, "cat.png", png((3, 3, 3, 255)), overwrite="true")
    assert r.json()["name"] == "cat.png"
    assert (config.input_dir / "cat.png").read_bytes() == png((3, 3, 3, 255))
    r = client.post(
        "/api/upload/image",
        files={"image": ("d.png", png(), "image/png")},
        data={"type": "temp", "subfolder": "x/y"},
    )
    assert r.json() == {"name": "d.png", "subfolder": "x/y", "type": "temp"}
    assert (config.temp_dir / "x" / "y" / "d.png").is_file()
    assert not [p for p in config.input_dir.rglob("*.part")]


def test_upload_size_limit(client: TestClient, config: ServerConfig) -> None:
    big = os.urandom(config.max_upload_bytes + 1)
    assert upload(client, "big.png", big).status_code == 413
    assert not (config.input_dir / "big.png").exists()
    ok = upload(client, "small.png", png())
    assert ok.status_code == 200


def test_request_size_limit_without_content_length(client: TestClient, config: ServerConfig) -> None:
    def chunks():
        for _ in range(8):
            yield b" " * (config.max_request_bytes // 4)

    r = client.post("/prompt", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/prompt").status_code == 200


BAD_NAMES = [
    "../secret.txt",
    "..%2fsecret.txt",
    "%2e%2e%2fsecret.txt",
    "%252e%252e%252fsecret.txt",
    "/etc/passwd",
    "..\\secret.txt",
    "C:secret.txt",
    "sub/../../secret.txt",
    "..",
    "",
]
BAD_SUBFOLDERS = ["..", "../", "a/../..", "/etc", "%2e%2e", "..\\..", "C:\\Windows", "\\\\server\\share"]


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("top secret")
    return path


@pytest.mark.parametrize("name", BAD_NAMES)
def test_view_refuses_bad_filenames(client: TestClient, secret: Path, name: str) -> None:
    r = client.get("/view", params={"filename": name, "type": "output"})
    assert r.status_code in (400, 403, 404) and b"top secret" not in r.content


@pytest.mark.parametrize("sub", BAD_SUBFOLDERS)
def test_view_refuses_bad_subfolders(client: TestClient, secret: Path, sub: str) -> None:
    r = client.get("/view", params={"filename": "secret.txt", "subfolder": sub, "type": "output"})
    assert r.status_code in (400, 403) and b"top secret" not in r.content


def test_view_raw_encoded_query(client: TestClient, secret: Path) -> None:
    r = client.get("/view?filename=%2e%2e%2fsecret.txt&type=output")
    assert r.status_code == 400
    r = client.get("/view?filename=secret.txt&subfolder=%2e%2e&type=output")
    assert r.status_code == 403


def test_view_refuses_symlink_escape(client: TestClient, config: ServerConfig, secret: Path) -> None:
    (config.output_dir / "link.txt").symlink_to(secret)
    (config.output_dir / "linkdir").symlink_to(secret.parent, target_is_directory=True)
    assert client.get("/view", params={"filename": "link.txt"}).status_code == 403
    assert client.get("/view", params={"filename": "secret.txt", "subfolder": "linkdir"}).status_code == 403
    inside = config.output_dir / "real.png"
    inside.write_bytes(png())
    (config.output_dir / "ok-link.png").symlink_to(inside)
    assert client.get("/view", params={"filename": "ok-link.png"}).status_code == 200


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n])
def test_upload_refuses_bad_filenames(
    client: TestClient, config: ServerConfig, tmp_path: Path, name: str
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    r = upload(client, name, png())
    assert r.status_code in (400, 403)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not any(config.input_dir.rglob("*"))


@pytest.mark.parametrize("sub", BAD_SUBFOLDERS)
def test_upload_refuses_bad_subfolders(
    client: TestClient, config: ServerConfig, tmp_path: Path, sub: str
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    assert upload(client, "x.png", png(), subfolder=sub).status_code in (400, 403)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not any(config.input_dir.rglob("x.png"))


def test_upload_refuses_symlink_escape(client: TestClient, config: ServerConfig, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (config.input_dir / "linkdir").symlink_to(outside, target_is_directory=True)
    assert upload(client, "x.png", png(), subfolder="linkdir").status_code == 403
    assert upload(client, "x.png", png(), subfolder="linkdir/deeper").status_code == 403
    (config.input_dir / "dangling").symlink_to(outside / "new")
    assert upload(client, "x.png", png(), subfolder="dangling").status_code == 403
    (config.input_dir / "victim.png").symlink_to(outside / "victim.png")
    assert upload(client, "victim.png", png(), overwrite="true").status_code == 403
    assert list(outside.iterdir()) == []


def test_upload_mask_puts_the_masks_alpha_on_the_original(client: TestClient, config: ServerConfig) -> None:
    """ComfyUI's mask editor save: the original's colours, the uploaded mask's alpha, saved as a new
    input file (the original is left as it was)."""
    config.input_dir.mkdir(parents=True, exist_ok=True)
    original = Image.new("RGB", (8, 6), (200, 100, 50))
    original.save(config.input_dir / "photo.png")
    mask = Image.new("RGBA", (8, 6), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 4, 6))  # the left half painted out
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    ref = '{"filename": "photo.png", "subfolder": "", "type": "input"}'
    answer = client.post(
        "/upload/mask",
        files={"image": ("clipspace-mask.png", buffer.getvalue(), "image/png")},
        data={"original_ref": ref, "type": "input", "subfolder": "clipspace"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"}
    with Image.open(config.input_dir / "clipspace" / "clipspace-mask.png") as saved:
        assert saved.mode == "RGBA" and saved.size == (8, 6)
        assert saved.getpixel((1, 1)) == (200, 100, 50, 0) and saved.getpixel((6, 1)) == (200, 100, 50, 255)
    with Image.open(config.input_dir / "photo.png") as kept:
        assert kept.mode == "RGB"
    missing = client.post(
        "/upload/mask",
        files={"image": ("m.png", buffer.getvalue(), "image/png")},
        data={"original_ref": '{"filename": "nope.png", "type": "input"}'},
    )
    assert missing.status_code == 404
