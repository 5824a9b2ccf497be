"""The server's own state (the SQLite database) is out of reach of every file route: it lives in the
data directory, outside the folders clients name, and hidden names are refused everywhere."""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.conftest import wait_until
from server.doubles import FakeExecutor, save_prompt
from zturbo.errors import InputError
from zturbo.server import ServerConfig, create_app

LOCAL = "http://127.0.0.1:8188"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def databases(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.sqlite3*") if p.is_file()]


def attempts(client: TestClient, config: ServerConfig, db: Path) -> list[tuple[str, int, bytes]]:
    """Every way a client could name `db` (and the hidden state folder) through the file routes."""
    folders = {"output": config.output_dir, "input": config.input_dir, "temp": config.temp_dir}
    results = []

    def record(what: str, response) -> None:
        results.append((what, response.status_code, response.content))

    for kind, root in folders.items():
        relative = Path(os.path.relpath(db, root)).as_posix()
        *sub, name = relative.split("/")
        record(
            f"view {kind} {relative}",
            client.get("/view", params={"filename": name, "subfolder": "/".join(sub), "type": kind}),
        )
        record(f"view annotated {kind}", client.get("/view", params={"filename": f"{relative} [{kind}]"}))
        for mode in ("true", "false"):
            response = client.post(
                "/upload/image",
                files={"image": (name, b"not a database", "image/png")},
                data={"type": kind, "subfolder": "/".join(sub), "overwrite": mode},
            )
            record(f"upload {kind} {relative} overwrite={mode}", response)
        response = client.post("/zturbo/outputs/delete", json={"filename": name, "subfolder": "/".join(sub)})
        record(f"delete {relative}", response)
    user_root = config.user_dir / "default"
    relative = Path(os.path.relpath(db, user_root)).as_posix()
    encoded = relative.replace("/", "%2F")
    record("userdata get", client.get(f"/api/userdata/{encoded}"))
    record("userdata post", client.post(f"/api/userdata/{encoded}", content=b"x"))
    record("userdata delete", client.delete(f"/api/userdata/{encoded}"))
    record("userdata move", client.post(f"/api/userdata/{encoded}/move/stolen.json"))
    for dir_ in ("..", "../..", ".zturbo"):
        record(f"userdata list {dir_}", client.get("/api/userdata", params={"dir": dir_, "recurse": True}))
    return results


def test_database_unreachable_through_every_file_route(config: ServerConfig) -> None:
    with TestClient(create_app(config, executor=FakeExecutor(config.output_dir)), base_url=LOCAL) as client:
        prompt_id = client.post("/prompt", json={"prompt": save_prompt()}).json()["prompt_id"]
        wait_until(lambda: client.get(f"/history/{prompt_id}").json())
        found = databases(config.output_dir.parent)
        assert found, "the server keeps a database somewhere"
        before = {p: p.read_bytes() for p in found if p.suffix == ".sqlite3"}
        for db in found:
            for what, status, body in attempts(client, config, db):
                assert status in (400, 403, 404), (what, status, body[:200])
                assert b"SQLite format" not in body, what
        # Still there, still the same database, still readable.
        assert client.get(f"/history/{prompt_id}").json()[prompt_id]["status"]["status_str"] == "success"
    for db in before:
        assert db.is_file()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with TestClient(create_app(config, executor=FakeExecutor(config.output_dir)), base_url=LOCAL) as client:
        assert prompt_id in client.get("/history").json()


def test_state_lives_in_the_data_dir(tmp_path: Path) -> None:
    config = ServerConfig(output_dir=tmp_path / "work" / "output", input_dir=tmp_path / "work" / "input")
    assert config.data_dir == tmp_path / "work" / ".zturbo"
    assert config.state_db.parent == config.data_dir
    assert config.user_dir == config.data_dir / "user" and config.temp_dir == config.data_dir / "temp"
    for folder in (config.output_dir, config.input_dir, config.temp_dir, config.user_dir):
        assert folder not in config.state_db.parents
    custom = ServerConfig(output_dir=tmp_path / "o", data_dir=tmp_path / "state")
    assert custom.state_db == tmp_path / "state" / "zturbo.sqlite3"


@pytest.mark.parametrize("inside", ["output", "output/sub", "input", "temp"])
def test_data_dir_inside_a_client_folder_is_refused(tmp_path: Path, inside: str) -> None:
    with pytest.raises(InputError, match="data_dir"):
        ServerConfig(
            output_dir=tmp_path / "output",
            input_dir=tmp_path / "input",
            temp_dir=tmp_path / "temp",
            data_dir=tmp_path / inside,
        )


def test_old_database_in_the_output_folder_is_moved(config: ServerConfig) -> None:
    """Earlier versions kept history in `output/.zturbo/`: it moves to the data dir, once."""
    with TestClient(create_app(config, executor=FakeExecutor(config.output_dir)), base_url=LOCAL) as client:
        prompt_id = client.post("/prompt", json={"prompt": save_prompt()}).json()["prompt_id"]
        wait_until(lambda: client.get(f"/history/{prompt_id}").json())
    legacy = config.output_dir / ".zturbo" / "history.sqlite3"
    legacy.parent.mkdir()
    os.replace(config.state_db, legacy)
    with TestClient(create_app(config, executor=FakeExecutor(config.output_dir)), base_url=LOCAL) as client:
        assert prompt_id in client.get("/history").json()
    assert not legacy.exists() and config.state_db.is_file()


def test_hidden_names_refused_on_file_routes(client: TestClient, config: ServerConfig) -> None:
    (config.output_dir / ".hidden.png").write_bytes(png())
    (config.output_dir / ".cache").mkdir()
    (config.output_dir / ".cache" / "a.png").write_bytes(png())
    assert client.get("/view", params={"filename": ".hidden.png"}).status_code == 403
    assert client.get("/view", params={"filename": "a.png", "subfolder": ".cache"}).status_code == 403
    response = client.post("/upload/image", files={"image": (".x.png", png(), "image/png")})
    assert response.status_code == 403 and "hidden" in response.json()["error"]["message"]
    response = client.post(
        "/upload/image", files={"image": ("x.png", png(), "image/png")}, data={"subfolder": "a/.git"}
    )
    assert response.status_code == 403
    assert client.post("/zturbo/outputs/delete", json={"filename": ".hidden.png"}).status_code == 403
    assert (config.output_dir / ".hidden.png").is_file()
    assert client.post("/api/userdata/.secret.json", content=b"{}").status_code == 403
    assert client.post("/api/userdata/workflows%2Fa.json", content=b"{}").status_code == 200
    (config.user_dir / "default" / "workflows" / ".tmp-partial").write_bytes(b"half")
    assert client.get("/api/userdata", params={"dir": "workflows"}).json() == ["a.json"]


@pytest.mark.parametrize("length", [256, 300, 1000])
def test_long_names_are_a_clear_400(client: TestClient, length: int) -> None:
    name = "a" * (length - 4) + ".png"
    checks = [
        client.get("/view", params={"filename": name}),
        client.get("/view", params={"filename": "x.png", "subfolder": "s" * length}),
        client.post("/upload/image", files={"image": (name, png(), "image/png")}),
        client.post(f"/api/userdata/{name}", content=b"{}"),
        client.post(f"/api/userdata/workflows%2F{'d' * length}%2Fa.json", content=b"{}"),
        client.post("/zturbo/outputs/delete", json={"filename": name}),
    ]
    for response in checks:
        assert response.status_code == 400, response.text
        assert "255" in response.text
    chinese = "城市夜景" * 21 + ".png"  # 84 characters, 256 bytes of UTF-8
    assert client.post("/upload/image", files={"image": (chinese, png(), "image/png")}).status_code == 400
    ok = "城市夜景" * 20 + ".png"
    assert client.post("/upload/image", files={"image": (ok, png(), "image/png")}).status_code == 200


def test_a_folder_in_the_way_is_a_clear_4xx(client: TestClient, config: ServerConfig) -> None:
    (config.input_dir / "taken.png").mkdir()
    response = client.post(
        "/upload/image", files={"image": ("taken.png", png(), "image/png")}, data={"overwrite": "true"}
    )
    assert response.status_code == 400 and "folder" in response.json()["error"]["message"]
    assert client.post("/api/userdata/workflows%2Fa.json", content=b"{}").status_code == 200
    assert client.post("/api/userdata/workflows", content=b"{}").status_code == 409
    response = client.post("/api/userdata/workflows%2Fa.json/move/workflows?overwrite=true")
    assert response.status_code == 409
