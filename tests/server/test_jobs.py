"""`/api/jobs`: one list of pending, running and finished prompts, with ComfyUI's fields."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from server.conftest import wait_until
from server.doubles import FakeExecutor, save_prompt

WORKFLOW = {"extra_pnginfo": {"workflow": {"id": "wf-1", "nodes": []}}}


def post(client: TestClient, prompt: dict, **extra) -> str:
    return client.post("/prompt", json={"prompt": prompt, **extra}).json()["prompt_id"]


def test_jobs_across_states(client: TestClient, executor: FakeExecutor) -> None:
    done = post(client, save_prompt(), extra_data=WORKFLOW)
    failed = post(client, {**save_prompt(), "5": {"class_type": "Fail", "inputs": {}}})
    wait_until(lambda: len(client.get("/history").json()) == 2)
    executor.gate.clear()
    running = post(client, save_prompt())
    wait_until(lambda: client.get("/queue").json()["queue_running"])
    pending = post(client, save_prompt())

    body = client.get("/api/jobs").json()
    assert body["pagination"] == {"offset": 0, "limit": None, "total": 4, "has_more": False}
    by_id = {job["id"]: job for job in body["jobs"]}
    assert {k: by_id[k]["status"] for k in by_id} == {
        done: "completed",
        failed: "failed",
        running: "in_progress",
        pending: "pending",
    }
    finished = by_id[done]
    assert finished["workflow_id"] == "wf-1" and finished["outputs_count"] == 1
    assert finished["preview_output"]["nodeId"] == "9" and finished["preview_output"]["mediaType"] == "images"
    assert finished["execution_end_time"] >= finished["execution_start_time"] >= finished["create_time"]
    assert by_id[failed]["execution_error"]["exception_message"] == "boom"
    times = [j["create_time"] for j in body["jobs"]]
    assert times == sorted(times, reverse=True)  # newest first

    page = client.get(
        "/api/jobs", params={"status": "completed,failed", "sort_order": "asc", "limit": 1}
    ).json()
    assert [j["id"] for j in page["jobs"]] == [done] and page["pagination"]["has_more"] is True
    assert client.get("/api/jobs", params={"workflow_id": "wf-1"}).json()["pagination"]["total"] == 1

    detail = client.get(f"/api/jobs/{done}").json()
    assert detail["outputs"]["9"]["images"] and detail["execution_status"]["status_str"] == "success"
    assert detail["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"] == "wf-1"
    assert client.get(f"/api/jobs/{pending}").json()["workflow"]["prompt"] == save_prompt()
    assert client.get(f"/api/jobs/{uuid.uuid4()}").status_code == 404

    assert client.post(f"/api/jobs/{pending}/cancel").json() == {"cancelled": True}
    assert client.post("/api/jobs/cancel", json={"job_ids": [running, done]}).json() == {"cancelled": True}
    assert client.post(f"/api/jobs/{done}/cancel").json() == {"cancelled": False}
    executor.gate.set()
    wait_until(lambda: client.get(f"/history/{running}").json())
    assert client.get(f"/api/jobs/{running}").json()["status"] == "cancelled"


def test_jobs_query_errors(client: TestClient) -> None:
    for params in (
        {"status": "bogus"},
        {"sort_by": "name"},
        {"sort_order": "up"},
        {"limit": "0"},
        {"limit": "x"},
        {"offset": "y"},
    ):
        response = client.get("/api/jobs", params=params)
        assert response.status_code == 400 and "error" in response.json()
    bad = client.post("/api/jobs/cancel", json={"job_ids": ["not-a-uuid"]})
    assert bad.status_code == 400 and bad.json()["invalid_ids"] == ["not-a-uuid"]
