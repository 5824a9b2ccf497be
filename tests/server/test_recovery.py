"""Every submitted prompt ends with a final state and an event: the queue is journaled in SQLite, so a
crash loses nothing (waiting prompts run after the restart, the one that was running is marked failed
and its client told), cancelled prompts are recorded and announced, and an id is never reused.

A crash is simulated here by copying the database as it is at that moment (SQLite's backup API: what
a `kill -9` leaves, since every transaction commits before the server moves on); test_processes.py
kills real server processes.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from websockets.sync.client import connect

from server.conftest import LiveServer, run_live, wait_until
from server.doubles import FakeExecutor, save_prompt
from server.test_ws import events, finished, recv, recv_until, submit
from zturbo.server import ServerConfig, create_app

LOCAL = "http://127.0.0.1:8188"


def snapshot(config: ServerConfig, into: Path) -> ServerConfig:
    """A config whose data dir holds the database exactly as it is now (same output/input folders)."""
    into.mkdir(parents=True)
    target = into / config.state_db.name
    with sqlite3.connect(config.state_db) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return ServerConfig(
        models_dir=config.models_dir,
        output_dir=config.output_dir,
        input_dir=config.input_dir,
        data_dir=into,
        max_upload_bytes=config.max_upload_bytes,
        max_request_bytes=config.max_request_bytes,
    )


@pytest.fixture
def crashed(client: TestClient, executor: FakeExecutor, config: ServerConfig, tmp_path: Path):
    """One prompt running (blocked), five waiting, then the state a crash would leave."""
    executor.gate.clear()
    running = client.post("/prompt", json={"prompt": save_prompt(), "client_id": "alice"}).json()["prompt_id"]
    wait_until(executor.started.is_set)
    (config.output_dir / ".tmp-half.png").write_bytes(b"\x89PNG half")  # a save cut short
    waiting = [
        client.post("/prompt", json={"prompt": save_prompt(i), "client_id": "bob"}).json()["prompt_id"]
        for i in range(5)
    ]
    urgent = client.post("/prompt", json={"prompt": save_prompt(), "front": True}).json()["prompt_id"]
    after = snapshot(config, tmp_path / "after-crash")
    yield after, running, [urgent, *waiting]
    executor.gate.set()


def test_restart_requeues_waiting_prompts_and_fails_the_running_one(crashed) -> None:
    config, running, waiting = crashed
    executor = FakeExecutor(config.output_dir)
    with TestClient(create_app(config, executor=executor), base_url=LOCAL) as client:
        wait_until(lambda: all(client.get(f"/history/{p}").json() for p in waiting))
        assert executor.executed == waiting  # in their order, the `front` one first, each once
        for prompt_id in waiting:
            assert client.get(f"/history/{prompt_id}").json()[prompt_id]["status"]["status_str"] == "success"
        entry = client.get(f"/history/{running}").json()[running]
        assert entry["status"]["status_str"] == "error"
        error = entry["status"]["messages"][-1]
        assert error[0] == "execution_error" and "server stopped" in error[1]["exception_message"]
        job = client.get(f"/api/jobs/{running}").json()
        assert job["status"] == "failed" and "not run again" in job["execution_error"]["exception_message"]
        assert not list(config.output_dir.glob(".tmp-*"))  # the interrupted save's leftovers are gone
        # New prompts are numbered after the recovered ones, so they queue behind them.
        number = client.post("/prompt", json={"prompt": save_prompt()}).json()["number"]
        recovered = client.get(f"/history/{waiting[-1]}").json()[waiting[-1]]["prompt"][0]
        assert number > recovered
        # Journal empty once everything ran: a second restart re-runs nothing.
        wait_until(lambda: client.get("/prompt").json()["exec_info"]["queue_remaining"] == 0)
    again = FakeExecutor(config.output_dir)
    with TestClient(create_app(config, executor=again), base_url=LOCAL) as client:
        assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert again.executed == []


def test_the_client_of_the_failed_prompt_is_told_when_it_reconnects(crashed) -> None:
    config, running, _ = crashed
    gated = FakeExecutor(config.output_dir)
    gated.gate.clear()
    for live in run_live(create_app(config, executor=gated)):
        with connect(live.ws("alice")) as ws:
            assert recv(ws)["type"] == "status"
            frames = recv_until(ws, finished(running))
            assert events(frames)[-2:] == ["execution_error", "executing"]
        with connect(live.ws("alice")) as ws:  # told once
            recv(ws)
            ws.send('{"type": "feature_flags", "data": {}}')
            assert recv(ws)["type"] == "feature_flags"
        gated.gate.set()


@pytest.fixture
def live_gated(config: ServerConfig, executor: FakeExecutor) -> Iterator[LiveServer]:
    executor.gate.clear()
    yield from run_live(create_app(config, executor=executor))
    executor.gate.set()


def test_cancelled_waiting_prompts_end_with_an_event_and_a_state(live_gated: LiveServer, executor) -> None:
    live = live_gated
    with connect(live.ws("carol")) as carol, connect(live.ws("dave")) as dave:
        recv(carol), recv(dave)
        running = submit(live, save_prompt(), "carol")
        wait_until(executor.started.is_set)
        mine, theirs, cleared = submit(live, save_prompt(), "carol"), submit(live, save_prompt(), "dave"), []
        cleared = [submit(live, save_prompt(), "dave") for _ in range(2)]
        httpx.post(f"{live.http}/queue", json={"delete": [theirs]}, timeout=10)
        frames = recv_until(dave, finished(theirs))
        assert events(frames)[-2:] == ["execution_interrupted", "executing"]
        httpx.post(f"{live.http}/api/jobs/{mine}/cancel", timeout=10)
        httpx.post(f"{live.http}/queue", json={"clear": True}, timeout=10)
        for prompt_id in cleared:
            recv_until(dave, finished(prompt_id))
        for prompt_id in (mine, theirs, *cleared):
            job = httpx.get(f"{live.http}/api/jobs/{prompt_id}", timeout=10)
            assert job.status_code == 200 and job.json()["status"] == "cancelled"
        # carol's own running prompt is not reset by the end of her cancelled one: that comes after.
        executor.gate.set()
        frames = recv_until(carol, finished(mine))
        names = [(f["type"], f["data"].get("prompt_id")) for f in frames if isinstance(f, dict)]
        assert names.index(("executing", running)) < names.index(("execution_interrupted", mine))


def test_a_prompt_id_is_used_once(client: TestClient) -> None:
    prompt_id = str(uuid.uuid4())
    first = client.post("/prompt", json={"prompt": save_prompt(), "prompt_id": prompt_id})
    assert first.status_code == 200
    wait_until(lambda: client.get(f"/history/{prompt_id}").json())
    before = client.get(f"/history/{prompt_id}").json()
    again = client.post("/prompt", json={"prompt": save_prompt(7), "prompt_id": prompt_id})
    assert again.status_code == 400 and again.json()["error"]["type"] == "duplicate_prompt_id"
    assert client.get(f"/history/{prompt_id}").json() == before
