"""The priority queue alone, then through `/queue` and `/interrupt` with a blocked worker."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from server.conftest import wait_until
from server.doubles import FakeExecutor, save_prompt
from zturbo.server.queue import PromptQueue, QueueItem


def item(queue: PromptQueue, name: str, front: bool = False) -> QueueItem:
    return QueueItem(queue.next_number(front), name, {}, {}, [])


def drain(queue: PromptQueue) -> list[str]:
    order = []
    while (job := queue.get(timeout=0)) is not None:
        order.append(job.item.prompt_id)
        queue.task_done(job)
    return order


def test_priority_order_and_front() -> None:
    queue = PromptQueue()
    for name, front in [("a", False), ("b", False), ("c", True), ("d", False), ("e", True)]:
        queue.put(item(queue, name, front))
    assert [i.prompt_id for i in queue.pending()] == ["e", "c", "a", "b", "d"]
    assert drain(queue) == ["e", "c", "a", "b", "d"]


def test_equal_numbers_keep_arrival_order() -> None:
    queue = PromptQueue()
    for name in "xyz":
        queue.put(QueueItem(5.0, name, {}, {}, []))
    assert drain(queue) == ["x", "y", "z"]


def test_delete_clear_remaining_and_change_events() -> None:
    changes = []
    queue = PromptQueue(on_change=lambda: changes.append(1))
    for name in "abcd":
        queue.put(item(queue, name))
    assert queue.delete(["b", "zz"]) == ["b"]
    assert [i.prompt_id for i in queue.pending()] == ["a", "c", "d"]
    job = queue.get(timeout=0)
    assert queue.remaining() == 3 and queue.running()[0].prompt_id == "a"
    queue.clear()
    assert queue.pending() == [] and queue.remaining() == 1
    queue.task_done(job)
    assert queue.remaining() == 0
    assert len(changes) == 4 + 1 + 1 + 1 + 1


def test_interrupt_targets_only_the_running_prompt() -> None:
    queue = PromptQueue()
    queue.put(item(queue, "a"))
    assert queue.interrupt() is False  # nothing running: no interrupt left armed for later
    job = queue.get(timeout=0)
    assert queue.interrupt("other") is False and not job.interrupt.is_set()
    assert queue.interrupt("a") is True and job.interrupt.is_set()
    queue.task_done(job)
    queue.put(item(queue, "b"))
    assert not queue.get(timeout=0).interrupt.is_set()


def test_get_wakes_on_put_from_another_thread() -> None:
    queue = PromptQueue()
    threading.Timer(0.05, lambda: queue.put(item(queue, "late"))).start()
    job = queue.get(timeout=5)
    assert job is not None and job.item.prompt_id == "late"


def test_two_hundred_prompts() -> None:
    queue = PromptQueue()
    for i in range(200):
        queue.put(item(queue, f"p{i:03}"))
    assert queue.remaining() == 200
    assert drain(queue) == [f"p{i:03}" for i in range(200)]


def _block(client: TestClient, executor: FakeExecutor) -> str:
    executor.gate.clear()
    first = client.post("/prompt", json={"prompt": save_prompt()}).json()["prompt_id"]
    wait_until(executor.started.is_set)
    return first


def test_queue_route_shows_running_and_pending_by_priority(
    client: TestClient, executor: FakeExecutor
) -> None:
    running = _block(client, executor)
    late = client.post("/prompt", json={"prompt": save_prompt()}).json()
    urgent = client.post("/prompt", json={"prompt": save_prompt(), "front": True}).json()
    assert urgent["number"] < 0 < late["number"]
    body = client.get("/queue").json()
    assert [i[1] for i in body["queue_running"]] == [running]
    assert [i[1] for i in body["queue_pending"]] == [urgent["prompt_id"], late["prompt_id"]]
    assert len(body["queue_pending"][0]) == 5
    assert client.get("/prompt").json()["exec_info"]["queue_remaining"] == 3
    executor.gate.set()
    wait_until(lambda: client.get("/prompt").json()["exec_info"]["queue_remaining"] == 0)
    assert executor.executed == [running, urgent["prompt_id"], late["prompt_id"]]


def test_queue_delete_and_clear(client: TestClient, executor: FakeExecutor) -> None:
    _block(client, executor)
    ids = [client.post("/prompt", json={"prompt": save_prompt()}).json()["prompt_id"] for _ in range(3)]
    assert client.post("/queue", json={"delete": [ids[1]]}).status_code == 200
    assert [i[1] for i in client.get("/queue").json()["queue_pending"]] == [ids[0], ids[2]]
    assert client.post("/api/queue", json={"clear": True}).status_code == 200
    assert client.get("/queue").json()["queue_pending"] == []
    executor.gate.set()


def test_interrupt_route(client: TestClient, executor: FakeExecutor) -> None:
    running = _block(client, executor)
    assert client.post("/interrupt", json={"prompt_id": "someone-else"}).status_code == 200
    assert client.post("/interrupt").status_code == 200
    entry = wait_until(lambda: client.get(f"/history/{running}").json())[running]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    executor.gate.set()
    follow = client.post("/prompt", json={"prompt": save_prompt()}).json()["prompt_id"]
    done = wait_until(lambda: client.get(f"/history/{follow}").json())[follow]
    assert done["status"]["status_str"] == "success"
