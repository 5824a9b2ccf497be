"""WebSocket behaviour on a real uvicorn server: greeting, routing of events, previews, and a server
that keeps serving through failures, interrupts, vanished clients and a long queue."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from server.conftest import LiveServer, wait_until
from server.doubles import FakeExecutor, save_prompt

Frame = dict[str, Any] | bytes


def recv(ws: ClientConnection, timeout: float = 10.0) -> Frame:
    message = ws.recv(timeout=timeout)
    return message if isinstance(message, bytes) else json.loads(message)


def recv_until(ws: ClientConnection, done, timeout: float = 10.0) -> list[Frame]:
    frames = []
    while True:
        frame = recv(ws, timeout)
        frames.append(frame)
        if done(frame):
            return frames


def finished(prompt_id: str):
    return lambda f: (
        isinstance(f, dict)
        and f["type"] == "executing"
        and f["data"] == {"node": None, "prompt_id": prompt_id}
    )


def events(frames: list[Frame]) -> list[str]:
    return [f["type"] for f in frames if isinstance(f, dict)]


def submit(live: LiveServer, prompt: dict, client_id: str | None = None, **extra: Any) -> str:
    body = {"prompt": prompt, **extra}
    if client_id:
        body["client_id"] = client_id
    response = httpx.post(f"{live.http}/prompt", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def history(live: LiveServer, prompt_id: str) -> dict:
    return httpx.get(f"{live.http}/history/{prompt_id}", timeout=10).json().get(prompt_id, {})


def test_status_with_sid_on_connect(live: LiveServer) -> None:
    with connect(live.ws("client-a")) as ws:
        assert recv(ws) == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "client-a"},
        }
    with connect(live.ws()) as ws:
        sid = recv(ws)["data"]["sid"]
        assert len(sid) == 32
    with connect(f"ws://{live.host}:{live.port}/api/ws?clientId=b") as ws:
        assert recv(ws)["data"]["sid"] == "b"


def test_events_go_to_the_submitting_client(live: LiveServer) -> None:
    with connect(live.ws("a")) as a, connect(live.ws("b")) as b:
        recv(a), recv(b)
        prompt_id = submit(live, save_prompt(3), "a")
        frames = recv_until(a, finished(prompt_id))
        names = events(frames)
        for name in (
            "execution_start",
            "execution_cached",
            "executing",
            "progress",
            "executed",
            "execution_success",
        ):
            assert name in names
        progress = [f["data"] for f in frames if isinstance(f, dict) and f["type"] == "progress"]
        assert [p["value"] for p in progress] == [1, 2, 3] and progress[0]["max"] == 3
        executed = next(f["data"] for f in frames if isinstance(f, dict) and f["type"] == "executed")
        assert executed["node"] == "9" and executed["prompt_id"] == prompt_id
        assert executed["output"]["images"][0]["type"] == "output"
        previews = [f for f in frames if isinstance(f, bytes)]
        assert len(previews) == 3
        assert struct.unpack(">II", previews[0][:8]) == (1, 1) and previews[0][8:10] == b"\xff\xd8"
        # b sees queue status only, never a's job events or previews.
        wait_until(lambda: history(live, prompt_id))
        seen = recv_until(
            b, lambda f: f["type"] == "status" and f["data"]["status"]["exec_info"]["queue_remaining"] == 0
        )
        assert set(events(seen)) == {"status"} and not [f for f in seen if isinstance(f, bytes)]


def test_feature_flags_and_preview_metadata(live: LiveServer) -> None:
    with connect(live.ws("a")) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        reply = recv(ws)
        assert reply["type"] == "feature_flags" and reply["data"]["supports_preview_metadata"] is True
        prompt_id = submit(live, save_prompt(1), "a")
        frames = recv_until(ws, finished(prompt_id))
        preview = next(f for f in frames if isinstance(f, bytes))
        kind, length = struct.unpack(">II", preview[:8])
        meta = json.loads(preview[8 : 8 + length])
        assert kind == 4 and meta["node_id"] == "1" and meta["prompt_id"] == prompt_id
        assert meta["image_type"] == "image/jpeg" and preview[8 + length : 10 + length] == b"\xff\xd8"


def remaining_is(n: int):
    return lambda f: (
        isinstance(f, dict)
        and f["type"] == "status"
        and f["data"]["status"]["exec_info"]["queue_remaining"] == n
    )


def test_status_broadcast_on_queue_changes(live: LiveServer, executor: FakeExecutor) -> None:
    executor.gate.clear()
    with connect(live.ws("watcher")) as ws:
        recv(ws)
        first = submit(live, save_prompt(), "someone-else")
        second = submit(live, save_prompt(), "someone-else")
        frames = recv_until(ws, remaining_is(2))
        assert set(events(frames)) == {"status"}  # not the watcher's job: status only
        assert all("sid" not in f["data"] for f in frames if isinstance(f, dict))
        httpx.post(f"{live.http}/queue", json={"delete": [second]}, timeout=10)
        recv_until(ws, remaining_is(1))
        executor.gate.set()
        recv_until(ws, remaining_is(0))
    assert history(live, first)["status"]["status_str"] == "success"
    cancelled = history(live, second)["status"]  # a deleted prompt ends as cancelled, with its events
    assert cancelled["status_str"] == "error" and cancelled["messages"][0][0] == "execution_interrupted"


def test_prompt_without_client_id_is_broadcast(live: LiveServer) -> None:
    with connect(live.ws("anyone")) as ws:
        recv(ws)
        prompt_id = submit(live, save_prompt(1))
        frames = recv_until(ws, finished(prompt_id))
        assert "execution_success" in events(frames)  # ComfyUI sends to everyone when no client_id


def test_reconnect_mid_job_gets_current_node(live: LiveServer, executor: FakeExecutor) -> None:
    executor.gate.clear()
    with connect(live.ws("a")) as ws:
        recv(ws)
        prompt_id = submit(live, save_prompt(), "a")
        recv_until(ws, lambda f: isinstance(f, dict) and f["type"] == "progress")
    with connect(live.ws("a")) as ws:
        assert recv(ws)["type"] == "status"
        assert recv(ws) == {"type": "executing", "data": {"node": "1", "prompt_id": prompt_id}}
        executor.gate.set()
        recv_until(ws, finished(prompt_id))


def test_client_disconnecting_mid_job(live: LiveServer, executor: FakeExecutor) -> None:
    executor.gate.clear()
    with connect(live.ws("leaver")) as ws:
        recv(ws)
        prompt_id = submit(live, save_prompt(50), "leaver")
        recv_until(ws, lambda f: isinstance(f, bytes))
        ws.socket.shutdown(socket.SHUT_RDWR)  # vanish mid-job: no close handshake, unread frames left
    executor.gate.set()
    assert wait_until(lambda: history(live, prompt_id))["status"]["status_str"] == "success"
    with connect(live.ws("next")) as ws2:
        recv(ws2)
        nxt = submit(live, save_prompt(), "next")
        recv_until(ws2, finished(nxt))


@pytest.mark.parametrize("node", ["Fail", "Crash"])
def test_failing_job_keeps_server_serving(live: LiveServer, node: str) -> None:
    with connect(live.ws("a")) as ws:
        recv(ws)
        bad = {**save_prompt(), "5": {"class_type": node, "inputs": {}}}
        prompt_id = submit(live, bad, "a")
        frames = recv_until(ws, finished(prompt_id))
        error = next(f["data"] for f in frames if isinstance(f, dict) and f["type"] == "execution_error")
        assert error["prompt_id"] == prompt_id and error["exception_message"]
        entry = history(live, prompt_id)
        assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
        assert entry["status"]["messages"][-1][0] == "execution_error"
        good = submit(live, save_prompt(), "a")
        frames = recv_until(ws, finished(good))
        assert "execution_success" in events(frames)


def test_interrupt_over_http_keeps_serving(live: LiveServer, executor: FakeExecutor) -> None:
    executor.gate.clear()
    with connect(live.ws("a")) as ws:
        recv(ws)
        prompt_id = submit(live, save_prompt(), "a")
        recv_until(ws, lambda f: isinstance(f, dict) and f["type"] == "progress")
        assert (
            httpx.post(f"{live.http}/interrupt", json={"prompt_id": prompt_id}, timeout=10).status_code == 200
        )
        frames = recv_until(ws, finished(prompt_id))
        assert "execution_interrupted" in events(frames)
        executor.gate.set()
        good = submit(live, save_prompt(), "a")
        assert "execution_success" in events(recv_until(ws, finished(good)))


def test_two_hundred_queued_prompts(live: LiveServer, executor: FakeExecutor) -> None:
    executor.gate.clear()
    with connect(live.ws("bulk")) as ws, httpx.Client(base_url=live.http, timeout=10) as http:
        recv(ws)
        ids = [
            http.post("/prompt", json={"prompt": save_prompt(0), "client_id": "bulk"}).json()["prompt_id"]
            for _ in range(200)
        ]
        queue = http.get("/queue").json()
        assert len(queue["queue_running"]) + len(queue["queue_pending"]) == 200
        executor.gate.set()
        recv_until(ws, finished(ids[-1]), timeout=60)
        assert http.get("/prompt").json()["exec_info"]["queue_remaining"] == 0
        assert len(http.get("/history").json()) == 200
        assert executor.executed == ids
