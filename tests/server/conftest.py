"""Fixtures: an app on temporary folders with the test-double executor, in-process or on real uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.doubles import FakeExecutor
from zturbo.server import ServerConfig, create_app
from zturbo.server.uvicorn_setup import uvicorn_config


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def finished_entry(http: str, prompt_id: str, timeout: float = 120) -> dict:
    """`prompt_id`'s /history entry on the server at `http`, once it has finished (success or not)."""

    def entry() -> dict | None:
        return httpx.get(f"{http}/history/{prompt_id}", timeout=30).json().get(prompt_id)

    try:
        return cast(dict, wait_until(entry, timeout, interval=0.1))
    except AssertionError:
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout}s") from None


def queue_prompt(http: str, prompt: dict, client_id: str = "t", timeout: float = 120) -> dict:
    """POST an API-format `prompt` to the server at `http`; its /history entry once it has finished."""
    response = httpx.post(f"{http}/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=30)
    assert response.status_code == 200, response.text
    return finished_entry(http, response.json()["prompt_id"], timeout)


@pytest.fixture
def config(tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        models_dir=tmp_path / "models",
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
        user_dir=tmp_path / "user",
        max_upload_bytes=64 * 1024,
        max_request_bytes=256 * 1024,
        preview_method="auto",  # the WebSocket tests exercise preview frames
    )


@pytest.fixture
def executor(config: ServerConfig) -> FakeExecutor:
    return FakeExecutor(config.output_dir)


@pytest.fixture
def client(config: ServerConfig, executor: FakeExecutor) -> Iterator[TestClient]:
    with TestClient(create_app(config, executor=executor), base_url="http://127.0.0.1:8188") as test_client:
        yield test_client


@dataclass
class LiveServer:
    app: FastAPI
    host: str
    port: int

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws(self, client_id: str | None = None) -> str:
        return f"ws://{self.host}:{self.port}/ws" + (f"?clientId={client_id}" if client_id else "")


def run_live(app: FastAPI) -> Iterator[LiveServer]:
    """Real uvicorn on 127.0.0.1 and a free port (port 0), in a thread, set up as `serve` sets it up;
    stopped when the test ends."""
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(app, "127.0.0.1", port)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def live(config: ServerConfig, executor: FakeExecutor) -> Iterator[LiveServer]:
    yield from run_live(create_app(config, executor=executor))


@pytest.fixture(scope="session")
def real_live(tiny_models: Path, tmp_path_factory) -> Iterator[LiveServer]:
    """The real engine on the tiny models behind real uvicorn, shared by the other-client API tests
    (OpenAI, A1111, MCP): one model load for all of them."""
    yield from run_live(create_app(real_engine_config(tiny_models, tmp_path_factory.mktemp("clients_server"))))


def real_engine_config(models_dir: Path, root: Path) -> ServerConfig:
    """A server on the real engine (CPU, memory planned) with its folders under `root`."""
    from zturbo.runtime.settings import EngineSettings

    return ServerConfig(
        models_dir=models_dir,
        output_dir=root / "output",
        input_dir=root / "input",
        temp_dir=root / "temp",
        user_dir=root / "user",
        engine=EngineSettings("cpu", vram="auto"),
    )


def history_entry_for(live: LiveServer, filename: str) -> tuple[str, dict]:
    """The `/history` entry (id, entry) whose outputs include `filename`; fails if none does."""
    import httpx

    for prompt_id, entry in httpx.get(f"{live.http}/history", timeout=30).json().items():
        for node_out in entry.get("outputs", {}).values():
            if any(i.get("filename") == filename for i in node_out.get("images", [])):
                return prompt_id, entry
    raise AssertionError(f"{filename} is in no /history entry")


def in_gallery(live: LiveServer, filename: str) -> dict | None:
    """The creator gallery's item for `filename` (with the settings read back from its graph), or None."""
    import httpx

    items = httpx.get(f"{live.http}/zturbo/gallery", timeout=30).json()["items"]
    return next((item for item in items if item["image"]["filename"] == filename), None)
