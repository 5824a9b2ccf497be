"""SQLite history: ComfyUI's paging, delete/clear, and survival across app restarts."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from server.conftest import wait_until
from server.doubles import FakeExecutor, save_prompt
from zturbo.server import ServerConfig, create_app
from zturbo.server.history import HistoryRecord, HistoryStore

LOCAL = "http://127.0.0.1:8188"


def record(prompt_id: str, status: str = "success") -> HistoryRecord:
    outputs = {"9": {"images": [{"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}]}}
    return HistoryRecord(
        item=[0, prompt_id, {}, {"create_time": 1}, ["9"]],
        outputs=outputs,
        status={"status_str": status, "completed": status == "success", "messages": []},
    )


def test_paging_like_comfyui(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    for i in range(5):
        store.add(record(f"p{i}"))
    assert list(store.get_history()) == ["p0", "p1", "p2", "p3", "p4"]
    assert list(store.get_history(max_items=2)) == ["p3", "p4"]  # newest, oldest first
    assert list(store.get_history(max_items=2, offset=1)) == ["p1", "p2"]
    assert list(store.get_history(offset=3)) == ["p3", "p4"]
    assert store.get("p1")["outputs"]["9"]["images"][0]["filename"] == "p1.png"
    assert store.get("missing") is None


def test_delete_clear_trim_and_output_index(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3", max_items=3)
    for i in range(5):
        store.add(record(f"p{i}"))
    assert list(store.get_history()) == ["p2", "p3", "p4"]
    assert store.find_output("p3.png") == "p3" and store.find_output("p0.png") is None
    store.delete(["p3"])
    assert list(store.get_history()) == ["p2", "p4"] and store.find_output("p3.png") is None
    store.add(record("p2", status="error"))  # re-running an id replaces its entry
    assert list(store.get_history()) == ["p4", "p2"]
    store.clear()
    assert store.get_history() == {} and store.count() == 0


def test_huge_paging_numbers(tmp_path: Path) -> None:
    """Found by the fuzzer: numbers past SQLite's 64-bit integers were a 500 (OverflowError)."""
    store = HistoryStore(tmp_path / "h.sqlite3")
    store.add(record("p0"))
    assert list(store.get_history(max_items=10**30)) == ["p0"]
    assert store.get_history(max_items=1, offset=10**30) == {}
    assert list(store.get_history(max_items=2**63)) == ["p0"]


def test_wal_mode(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    assert store.db.pragma("journal_mode") == "wal"


def test_history_routes_and_restart(config: ServerConfig) -> None:
    ids = []
    with TestClient(create_app(config, executor=FakeExecutor(config.output_dir)), base_url=LOCAL) as client:
        for _ in range(3):
            ids.append(client.post("/prompt", json={"prompt": save_prompt()}).json()["prompt_id"])
        wait_until(lambda: len(client.get("/history").json()) == 3)
        assert list(client.get("/history", params={"max_items": 1}).json()) == [ids[2]]
        assert list(client.get("/api/history", params={"max_items": 1, "offset": 0}).json()) == [ids[0]]
        assert client.post("/history", json={"delete": [ids[0]]}).status_code == 200
        before = client.get(f"/history/{ids[1]}").json()
    assert config.state_db.is_file()

    with TestClient(create_app(config, executor=FakeExecutor(config.output_dir)), base_url=LOCAL) as client:
        assert list(client.get("/history").json()) == ids[1:]
        assert client.get(f"/history/{ids[1]}").json() == before
        image = before[ids[1]]["outputs"]["9"]["images"][0]
        assert client.get("/view", params=image).status_code == 200
        assert client.get(f"/history/{ids[0]}").json() == {}
        client.post("/history", json={"clear": True})
        assert client.get("/history").json() == {}
