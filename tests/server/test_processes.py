"""`zturbo serve` as a real process: `kill -9` mid-job three times on the real engine (tiny models,
CPU), and what the access log shows. Scaled for CI; RELIABILITY.md has the full-size runs."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from server.procs import ServerProcess, double_args, serve_args
from server.test_graph_integration import z_image_prompt

KILLS = int(os.environ.get("ZTURBO_KILLS", "3"))


def job(seed: int) -> dict:
    prompt = z_image_prompt(seed=seed, steps=8)
    prompt["7"]["inputs"].update(width=128, height=128)
    prompt["10"]["inputs"]["filename_prefix"] = f"kill/s{seed}"
    return prompt


def submit(server: ServerProcess, seed: int) -> str:
    response = httpx.post(f"{server.http}/prompt", json={"prompt": job(seed), "client_id": "k"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def frames(ws: ClientConnection, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            return
        if isinstance(message, str):
            yield json.loads(message)


def ended(message: dict) -> str | None:
    data = message["data"]
    return data.get("prompt_id") if message["type"] == "executing" and data.get("node") is None else None


def check_store(root: Path, finished: dict[str, dict]) -> None:
    """The database is intact and every finished prompt's history entry and images are whole."""
    db = root / ".zturbo" / "zturbo.sqlite3"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for prompt_id, entry in finished.items():
        for image in entry["outputs"]["10"]["images"]:
            with Image.open(root / "output" / image["subfolder"] / image["filename"]) as img:
                img.load()  # the whole file decodes: not a partial write
                assert img.size == (128, 128), prompt_id


def test_kill_9_mid_job_three_times(tiny_models: Path, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    server = ServerProcess(serve_args(root, tiny_models), tmp_path / "server.log").start()
    submitted: list[str] = []
    told: set[str] = set()  # prompts whose end event reached the client, across connections
    killed: list[str] = []
    seed = 0
    try:
        for _ in range(KILLS):
            with connect(server.ws("k")) as ws:
                for _ in range(3):
                    submitted.append(submit(server, seed := seed + 1))
                victim = None
                for message in frames(ws, 180):
                    told.add(ended(message) or "")
                    data = message["data"]
                    if message["type"] == "progress" and data["value"] >= 3 and data["prompt_id"] not in told:
                        victim = data["prompt_id"]
                        break
                assert victim is not None, "no job reached its third step"
                server.kill()
            killed.append(victim)
            server = ServerProcess(server.args, server.log_path).start()
            entry = httpx.get(f"{server.http}/history/{victim}", timeout=30).json()[victim]
            assert entry["status"]["status_str"] == "error"
            assert "server stopped" in entry["status"]["messages"][-1][1]["exception_message"]
            finished = {
                p: e
                for p, e in httpx.get(f"{server.http}/history", timeout=30).json().items()
                if p not in killed
            }
            check_store(root, {p: e for p, e in finished.items() if e["status"]["status_str"] == "success"})
        with connect(server.ws("k")) as ws:
            pending = set(submitted) - told
            for message in frames(ws, 240):
                pending.discard(ended(message) or "")
                if not pending:
                    break
            assert not pending, f"no end event for {pending}"
        history = httpx.get(f"{server.http}/history", timeout=30).json()
    finally:
        server.stop()
    assert set(history) == set(submitted)  # every submitted prompt has exactly one final entry
    for prompt_id in submitted:
        status = history[prompt_id]["status"]["status_str"]
        assert status == ("error" if prompt_id in killed else "success"), prompt_id
    good = {p: e for p, e in history.items() if p not in killed}
    check_store(root, good)
    names = [i["filename"] for e in good.values() for i in e["outputs"]["10"]["images"]]
    assert len(names) == len(set(names)) == len(good)  # no lost or duplicated output
    assert not list((root / "output").rglob(".tmp-*"))  # no partial PNG left
    assert len(killed) == KILLS


def test_the_access_log_hides_the_token(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(double_args(tmp_path / "srv", "--auth-token", "tok-s3cret"), log).start()
    try:
        assert httpx.get(f"{server.http}/prompt?token=tok-s3cret", timeout=10).status_code == 200
        assert httpx.get(f"{server.http}/prompt", timeout=10).status_code == 401
        with connect(f"{server.ws('c')}&token=tok-s3cret") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "status"
    finally:
        server.stop()
    text = log.read_text(encoding="utf-8")
    assert "GET /prompt?token=***" in text and "tok-s3cret" not in text


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
