"""Decompression bombs: a PNG of a few KB that declares 13000×13000 or 20000×20000 pixels is refused
from its header (413, a clear message) on every route that decodes images, fast and without memory."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.conftest import LiveServer, run_live
from zturbo.errors import ImageTooLargeError
from zturbo.server import ServerConfig, create_app

FAST_S = 2.0
MEMORY_BYTES = 150 * 1024 * 1024


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A valid greyscale PNG of side×side zeros: the rows compress ~1000:1, so it is a few hundred KB."""
    deflate = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


@pytest.fixture
def config(config: ServerConfig) -> ServerConfig:
    """Room for the bombs (a few hundred KB): they must be refused for their pixels, not their bytes."""
    config.max_upload_bytes = config.max_request_bytes = 4 * 2**20
    return config


@pytest.fixture(scope="module", params=[13000, 20000])
def bomb(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bombs") / f"bomb{request.param}.png"
    path.write_bytes(bomb_png(request.param))
    return path


def small_png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (size, size), (9, 8, 7, 128)).save(buf, format="PNG")
    return buf.getvalue()


class Budget:
    """CPU time (all threads of this process, the in-process server's included), wall time and
    resident-memory growth of the block it guards. CPU time is what decoding a bomb costs (tens of
    seconds); wall time only has a loose bound, since a shared machine can be slow for other reasons."""

    def __enter__(self) -> Budget:
        self.rss, self.start, self.cpu = (
            psutil.Process().memory_info().rss,
            time.monotonic(),
            time.process_time(),
        )
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.start
        self.cpu_seconds = time.process_time() - self.cpu
        self.grown = psutil.Process().memory_info().rss - self.rss

    def check(self, what: str) -> None:
        print(
            f"bomb: {what}: {self.cpu_seconds:.3f} s CPU, {self.seconds:.3f} s, {self.grown / 2**20:+.1f} MiB"
        )
        assert self.cpu_seconds < FAST_S, f"{what}: {self.cpu_seconds:.1f} s of CPU"
        assert self.seconds < 30, f"{what}: {self.seconds:.1f} s"
        assert self.grown < MEMORY_BYTES, f"{what}: +{self.grown / 2**20:.0f} MiB"


def refused(response, what: str) -> None:
    assert response.status_code == 413, (what, response.status_code, response.text[:300])
    assert "megapixels" in response.json()["error"]["message"], what


def test_bomb_files_are_small_and_valid(bomb: Path) -> None:
    data = bomb.read_bytes()
    assert len(data) < 600_000 and zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    side = struct.unpack(">I", data[16:20])[0]
    assert len(zlib.decompress(data[41:-16])) == side * (side + 1)  # really that many pixels


def test_view_preview_and_channels_refuse_bombs(client: TestClient, config: ServerConfig, bomb: Path) -> None:
    (config.output_dir / "bomb.png").write_bytes(bomb.read_bytes())
    for params in ({"preview": "webp;90"}, {"preview": "jpeg;50"}, {"channel": "rgb"}, {"channel": "a"}):
        with Budget() as budget:
            response = client.get("/view", params={"filename": "bomb.png", **params})
        refused(response, str(params))
        budget.check(str(params))
    # The file itself is still served as it is (nothing decodes it).
    assert client.get("/view", params={"filename": "bomb.png"}).content == bomb.read_bytes()


def test_uploads_refuse_bombs(client: TestClient, config: ServerConfig, bomb: Path) -> None:
    data = bomb.read_bytes()
    with Budget() as budget:
        response = client.post("/upload/image", files={"image": ("b.png", data, "image/png")})
    refused(response, "upload")
    budget.check("upload")
    assert not list(config.input_dir.rglob("*.png"))
    (config.input_dir / "small.png").write_bytes(small_png())
    ref = json.dumps({"filename": "small.png", "subfolder": "", "type": "input"})
    with Budget() as budget:
        response = client.post(
            "/upload/mask", files={"image": ("m.png", data, "image/png")}, data={"original_ref": ref}
        )
    refused(response, "mask")
    budget.check("mask")
    (config.input_dir / "big.png").write_bytes(data)
    ref = json.dumps({"filename": "big.png", "subfolder": "", "type": "input"})
    response = client.post(
        "/upload/mask", files={"image": ("m.png", small_png(), "image/png")}, data={"original_ref": ref}
    )
    refused(response, "mask of a bomb")


def test_inspect_refuses_bombs(client: TestClient, bomb: Path) -> None:
    with Budget() as budget:
        response = client.post("/zturbo/inspect", files={"file": ("b.png", bomb.read_bytes())})
    refused(response, "inspect")
    budget.check("inspect")


def test_uploads_must_be_images(client: TestClient) -> None:
    for data in (b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40):
        response = client.post("/upload/image", files={"image": ("x.png", data, "image/png")})
        assert response.status_code == 400 and "image" in response.json()["error"]["message"]


def test_upload_mask_applies_the_mask(client: TestClient, config: ServerConfig) -> None:
    Image.new("RGB", (8, 8), (200, 100, 50)).save(config.input_dir / "photo.png")
    mask = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    mask.putpixel((0, 0), (0, 0, 0, 255))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    ref = json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"})
    response = client.post(
        "/upload/mask",
        files={"image": ("clipspace-mask.png", buf.getvalue(), "image/png")},
        data={"original_ref": ref, "subfolder": "clipspace", "type": "input"},
    )
    assert response.json() == {"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"}
    with Image.open(config.input_dir / "clipspace" / "clipspace-mask.png") as out:
        assert out.size == (8, 8) and out.mode == "RGBA" and out.getpixel((7, 7))[:3] == (200, 100, 50)
    for bad in ('{"filename": "../x.png"}', '{"filename": ".zturbo"}', "[]", "not json"):
        response = client.post(
            "/upload/mask",
            files={"image": ("m.png", buf.getvalue(), "image/png")},
            data={"original_ref": bad},
        )
        assert response.status_code in (400, 403), bad


def test_limit_from_the_header_not_the_data() -> None:
    ImageTooLargeError.check(8192, 8192, "x")
    with pytest.raises(ImageTooLargeError, match="20000×20000 \\(400 megapixels\\)"):
        ImageTooLargeError.check(20000, 20000, "x")
    with pytest.raises(ImageTooLargeError, match="100 frames"):
        ImageTooLargeError.check(1024, 1024, "x", frames=100)


@pytest.fixture
def graph_live(config: ServerConfig) -> Iterator[LiveServer]:
    from server.test_graph_integration import FakeEngine, context_mod, executor_mod, registry_mod

    context = context_mod.ExecutionContext(
        models_dir=config.models_dir,
        output_dir=config.output_dir,
        input_dir=config.input_dir,
        temp_dir=config.temp_dir,
        engine=FakeEngine(),
    )
    executor = executor_mod.PromptExecutor(registry_mod.default_registry(context), context)
    yield from run_live(create_app(config, executor=executor))


def test_load_image_refuses_bombs(graph_live: LiveServer, config: ServerConfig, bomb: Path) -> None:
    """LoadImage → PreviewImage on a bomb put straight into the input folder: POST /prompt refuses it
    from the header (a validation error), at once."""
    (config.input_dir / "bomb.png").write_bytes(bomb.read_bytes())
    prompt: dict[str, dict] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "bomb.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    with Budget() as budget:
        response = httpx.post(f"{graph_live.http}/prompt", json={"prompt": prompt}, timeout=30)
    assert response.status_code == 400, response.text
    (error,) = response.json()["node_errors"]["1"]["errors"]
    assert response.json()["node_errors"]["1"]["class_type"] == "LoadImage"
    assert "bomb.png" in error["details"] and "megapixels" in error["details"], error
    budget.check("LoadImage")
    (config.input_dir / "ok.png").write_bytes(small_png())
    prompt["1"]["inputs"]["image"] = "ok.png"
    response = httpx.post(f"{graph_live.http}/prompt", json={"prompt": prompt}, timeout=30)
    assert response.status_code == 200
