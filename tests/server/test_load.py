"""Load on a real `serve` process: many clients, each on its own WebSocket, submitting at once. Each
prompt completes exactly once, its events reach only its own client, no output is lost or written
twice, and the server's memory stays bounded.

CI: 200 prompts from 20 clients on the test-double executor. `ZTURBO_LOAD_JOBS=500` and
`ZTURBO_LOAD_ENGINE=real` (the tiny models on CPU) give the full-size run in RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from server.doubles import save_prompt
from server.procs import ServerProcess, double_args, serve_args
from server.test_graph_integration import z_image_prompt

CLIENTS = 20
JOBS = int(os.environ.get("ZTURBO_LOAD_JOBS", "200"))
ENGINE = os.environ.get("ZTURBO_LOAD_ENGINE", "double")
RSS_BOUND = 200 * 2**20


def prompt_for(index: int) -> dict:
    if ENGINE != "real":
        return save_prompt(2)
    prompt = z_image_prompt(seed=max(index, 0), steps=1)
    prompt["10"]["inputs"]["filename_prefix"] = f"load/c{index}"
    return prompt


def output_node() -> str:
    return "9" if ENGINE != "real" else "10"


class LoadClient(threading.Thread):
    def __init__(self, server: ServerProcess, name: str, jobs: list[int]) -> None:
        super().__init__(daemon=True)
        self.server, self.name, self.jobs = server, name, jobs
        self.submitted: list[str] = []
        self.frames: list[dict] = []
        self.binary = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.server.ws(self.name), open_timeout=30, max_size=None) as ws:
                assert json.loads(ws.recv(timeout=30))["data"]["sid"] == self.name
                with httpx.Client(base_url=self.server.http, timeout=60) as http:
                    for index in self.jobs:
                        body = {"prompt": prompt_for(index), "client_id": self.name}
                        response = http.post("/prompt", json=body)
                        assert response.status_code == 200, response.text
                        self.submitted.append(response.json()["prompt_id"])
                waiting = set(self.submitted)
                deadline = time.monotonic() + 600
                while waiting and time.monotonic() < deadline:
                    message = ws.recv(timeout=deadline - time.monotonic())
                    if isinstance(message, bytes):
                        self.binary += 1
                        continue
                    frame = json.loads(message)
                    self.frames.append(frame)
                    data = frame["data"]
                    if frame["type"] == "executing" and data.get("node") is None:
                        waiting.discard(data.get("prompt_id"))
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_many_clients_each_on_its_own_websocket(request, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    args = serve_args(root, request.getfixturevalue("tiny_models")) if ENGINE == "real" else double_args(root)
    server = ServerProcess(args, tmp_path / "server.log").start()
    try:
        warm_up = httpx.post(f"{server.http}/prompt", json={"prompt": prompt_for(-1)}, timeout=60).json()
        deadline = time.monotonic() + 300  # the first prompt loads the models: memory is measured after it
        while not httpx.get(f"{server.http}/history/{warm_up['prompt_id']}", timeout=30).json():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rss = [server.rss()]
        clients = [
            LoadClient(server, f"client-{c:02}", list(range(c, JOBS, CLIENTS))) for c in range(CLIENTS)
        ]
        start = time.monotonic()
        for client in clients:
            client.start()
        while any(c.is_alive() for c in clients):
            rss.append(server.rss())
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        for client in clients:
            assert client.error is None, (client.name, repr(client.error))
        history = httpx.get(f"{server.http}/history", timeout=60).json()
        history.pop(warm_up["prompt_id"])
        rss.append(server.rss())
    finally:
        server.stop()

    submitted = [p for c in clients for p in c.submitted]
    assert len(submitted) == len(set(submitted)) == JOBS
    for client in clients:
        mine = set(client.submitted)
        ids = [f["data"].get("prompt_id") for f in client.frames if f["type"] != "status"]
        assert set(ids) <= mine, f"{client.name} got another client's events"
        ends = Counter(
            f["data"]["prompt_id"]
            for f in client.frames
            if f["type"] == "executing" and f["data"]["node"] is None
        )
        successes = Counter(f["data"]["prompt_id"] for f in client.frames if f["type"] == "execution_success")
        assert ends == Counter(mine) and successes == Counter(mine), client.name  # each exactly once
    assert set(history) == set(submitted)
    names = []
    for prompt_id in submitted:
        entry = history[prompt_id]
        assert entry["status"]["status_str"] == "success"
        for image in entry["outputs"][output_node()]["images"]:
            names.append((image["subfolder"], image["filename"]))
            assert (root / "output" / image["subfolder"] / image["filename"]).is_file()
    assert len(names) == len(set(names)) == JOBS  # none lost, none written twice
    report = {
        "engine": ENGINE,
        "clients": CLIENTS,
        "jobs": JOBS,
        "seconds": round(elapsed, 1),
        "jobs_per_s": round(JOBS / elapsed, 1),
        "rss_after_first_prompt_mib": round(rss[0] / 2**20),
        "rss_max_mib": round(max(rss) / 2**20),
        "preview_frames": sum(c.binary for c in clients),
    }
    print("load:", report)
    assert max(rss) - rss[0] < RSS_BOUND, report


@pytest.fixture(autouse=True)
def _enough_files() -> None:
    """20 WebSockets and 20 HTTP clients on one process: well within default limits, checked anyway."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft >= 256
    except ImportError:  # Windows: no such limit to speak of
        pass
