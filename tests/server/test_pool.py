"""The worker pool on a real local Ray instance: two CPU workers (Ray actors, separate processes) behind
the server's one queue and history, on the tiny random-weight models.

Images are compared with a single in-process engine's run of the same prompts for bit equality of the
pixels: both run the same code on the same weights and the same CPU; the reference runs with one
thread, as Ray's one-CPU actors do (OMP_NUM_THREADS=1), so every reduction runs in the same order.
"""

from __future__ import annotations

import importlib.util
import io
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from websockets.sync.client import connect

from server.conftest import LiveServer, finished_entry, run_live, wait_until
from server.test_graph_integration import z_image_prompt
from server.test_ws import finished, recv, recv_until
from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig, create_app
from zturbo.server.app import default_executor

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
CLIENTS, PER_CLIENT = 4, 5


def prompt_for(seed: int, steps: int = 2, size: int = 64) -> dict:
    prompt = z_image_prompt(seed=seed, steps=steps)
    prompt["7"]["inputs"].update(width=size, height=size)
    return prompt


def config_for(root: Path, models: Path, **pool: Any) -> ServerConfig:
    return ServerConfig(
        models_dir=models,
        output_dir=root / "output",
        input_dir=root / "input",
        data_dir=root / "state",
        engine=EngineSettings("cpu", vram="auto"),
        preview_method="auto",
        **pool,
    )


def workers(live: LiveServer) -> list[dict]:
    return httpx.get(f"{live.http}/system_stats", timeout=30).json()["zturbo_workers"]


@pytest.fixture(scope="module")
def pool_live(tiny_models: Path, tmp_path_factory) -> Iterator[LiveServer]:
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        app = create_app(config_for(tmp_path_factory.mktemp("pool"), tiny_models, workers=2))
        for live in run_live(app):
            wait_until(lambda live=live: all(w["state"] == "idle" for w in workers(live)), 60, 0.2)
            yield live
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_models: Path, tmp_path_factory):
    """Pixels of the single in-process engine's run of a prompt (memoised)."""
    executor = default_executor(config_for(tmp_path_factory.mktemp("single"), tiny_models))
    cache: dict[tuple, np.ndarray] = {}

    def pixels(seed: int, steps: int = 2, size: int = 64) -> np.ndarray:
        key = (seed, steps, size)
        if key not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                result = executor.execute(
                    prompt_for(*key),
                    f"ref-{seed}-{steps}-{size}",
                    outputs=["10"],
                    extra_data={},
                    emit=lambda e, d: None,
                    emit_preview=None,
                    interrupt=threading.Event(),
                )
            finally:
                torch.set_num_threads(threads)
            (image,) = result.outputs["10"]["images"]
            cache[key] = np.asarray(
                Image.open(executor.context.output_dir / image["filename"]).convert("RGB")
            )
        return cache[key]

    return pixels


def served_pixels(live: LiveServer, entry: dict) -> np.ndarray:
    (image,) = entry["outputs"]["10"]["images"]
    response = httpx.get(f"{live.http}/view", params=image, timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def history(live: LiveServer, prompt_id: str, timeout: float = 60) -> dict:
    return finished_entry(live.http, prompt_id, timeout)


def submit(live: LiveServer, prompt: dict, client_id: str) -> str:
    response = httpx.post(f"{live.http}/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def client_run(live: LiveServer, client: int, seen: dict[str, list[dict]]) -> None:
    """One client: its own WebSocket, five prompts, every frame it receives until all five end."""
    client_id = f"client-{client}"
    with connect(live.ws(client_id)) as ws:
        recv(ws)
        ids = [submit(live, prompt_for(client * PER_CLIENT + n), client_id) for n in range(PER_CLIENT)]
        frames: list[Any] = []
        for prompt_id in ids:
            if not any(finished(prompt_id)(f) for f in frames):
                frames += recv_until(ws, finished(prompt_id), timeout=120)
        seen[client_id] = [f for f in frames if isinstance(f, dict) and f["type"] != "status"]
        seen[client_id + ":ids"] = ids  # type: ignore[assignment]


def test_twenty_prompts_from_four_clients_spread_over_two_workers(pool_live: LiveServer, reference) -> None:
    before = {w["name"]: w["completed"] for w in workers(pool_live)}
    seen: dict[str, list] = {}
    threads = [threading.Thread(target=client_run, args=(pool_live, c, seen)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    files = set()
    for client in range(CLIENTS):
        ids, frames = seen[f"client-{client}:ids"], seen[f"client-{client}"]
        # Each client hears only about its own prompts, and each of them ends exactly once.
        assert {f["data"]["prompt_id"] for f in frames if "prompt_id" in f["data"]} == set(ids)
        for n, prompt_id in enumerate(ids):
            assert sum(finished(prompt_id)(f) for f in frames) == 1
            entry = history(pool_live, prompt_id)
            assert entry["status"]["status_str"] == "success", entry["status"]
            files.add(entry["outputs"]["10"]["images"][0]["filename"])
            assert np.array_equal(served_pixels(pool_live, entry), reference(client * PER_CLIENT + n))
    assert len(files) == CLIENTS * PER_CLIENT  # no image overwrote another
    done = {w["name"]: w["completed"] - before[w["name"]] for w in workers(pool_live)}
    assert sum(done.values()) == CLIENTS * PER_CLIENT and all(done.values()), done


def kill_worker_running(live: LiveServer, ws: Any, prompt_id: str, spare: int | None = None) -> int:
    """Kill the process of the worker that runs `prompt_id` (once the prompt has reported sampling
    progress, and on a worker other than the process `spare`, killed before); its pid."""
    recv_until(ws, lambda f: isinstance(f, dict) and f["type"] == "progress", timeout=60)
    # (a replacement worker that is still starting has no pid yet)
    running = lambda: [  # noqa: E731
        w for w in workers(live) if w.get("prompt_id") == prompt_id and w.get("pid") not in (None, spare)
    ]
    (busy,) = wait_until(running, timeout=60, interval=0.05)
    psutil.Process(busy["pid"]).kill()
    return busy["pid"]


def test_a_worker_killed_mid_prompt_has_it_requeued_and_the_image_is_right(pool_live, reference) -> None:
    with connect(pool_live.ws("killer")) as ws:
        recv(ws)
        prompt_id = submit(pool_live, prompt_for(101, steps=30, size=128), "killer")
        killed = kill_worker_running(pool_live, ws, prompt_id)
    entry = history(pool_live, prompt_id, timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert np.array_equal(served_pixels(pool_live, entry), reference(101, 30, 128))
    # The dead worker was replaced: two workers again, neither of them the killed process.
    pool = wait_until(
        lambda: (w := workers(pool_live)) and all(x["state"] == "idle" for x in w) and w, 60, 0.2
    )
    assert len(pool) == 2 and killed not in {w["pid"] for w in pool}


def test_a_prompt_whose_worker_dies_twice_fails_with_a_clear_error(pool_live: LiveServer) -> None:
    with connect(pool_live.ws("killer")) as ws:
        recv(ws)
        prompt_id = submit(pool_live, prompt_for(202, steps=30, size=128), "killer")
        first = kill_worker_running(pool_live, ws, prompt_id)
        kill_worker_running(pool_live, ws, prompt_id, spare=first)
    entry = history(pool_live, prompt_id, timeout=120)
    assert entry["status"]["status_str"] == "error"
    message = entry["status"]["messages"][-1][1]["exception_message"]
    assert "died while running the prompt" in message and "re-queued once" in message, message
    wait_until(lambda: all(w["state"] == "idle" for w in workers(pool_live)), timeout=60, interval=0.2)


def test_workers_join_and_leave(pool_live: LiveServer) -> None:
    """A third worker waits for a free CPU (Ray has two, both taken): listed as starting; it leaves again."""
    added = httpx.post(f"{pool_live.http}/zturbo/workers", timeout=30).json()
    listed = httpx.get(f"{pool_live.http}/zturbo/workers", timeout=30).json()["workers"]
    assert (
        added["state"] == "starting" and [w["name"] for w in listed][-1] == added["name"] and len(listed) == 3
    )
    assert httpx.delete(f"{pool_live.http}/zturbo/workers/{added['name']}", timeout=30).status_code == 204
    assert [w["name"] for w in workers(pool_live)] == [w["name"] for w in listed[:2]]
    assert httpx.delete(f"{pool_live.http}/zturbo/workers/nobody", timeout=30).status_code == 404


def test_system_stats_and_the_creator_page_show_the_workers(pool_live: LiveServer) -> None:
    pool = workers(pool_live)
    assert [(w["name"], w["device"], w["host"]) for w in pool] == [
        ("worker 0", "cpu", platform.node()),
        ("worker 1", "cpu", platform.node()),
    ]
    chromium = Path("/usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    if not chromium.exists():
        pytest.skip(f"{chromium} is missing (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(pool_live.http + "/")
        page.wait_for_selector("body[data-ready=true]")
        shown = page.locator("#workers li").all_inner_texts()
        browser.close()
    assert shown == [f"{w['name']} (cpu on {platform.node()}): {w['state']}" for w in pool]


def test_without_a_pool_the_one_worker_is_listed(client) -> None:
    body = client.get("/zturbo/workers").json()
    assert body == {"pool": False, "workers": [{"name": "in-process", "state": "idle"}]}
    assert "zturbo_workers" not in client.get("/system_stats").json()
    assert client.post("/zturbo/workers").status_code == 404


def load_benchmark() -> Any:
    path = Path(__file__).parents[2] / "benchmarks" / "workers.py"
    spec = importlib.util.spec_from_file_location("bench_workers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_measures_the_pool(pool_live: LiveServer) -> None:
    """benchmarks/workers.py's measurement, on this pool: its template prompts run, all of them counted."""
    bench = load_benchmark()
    prompts = [bench.template_prompt(seed, 64, 2) for seed in (1, 2, 3, 4)]
    row = bench.throughput(pool_live.http, prompts, timeout=120)
    assert row["images"] == 4 and row["images_per_s"] == pytest.approx(4 / row["seconds"], rel=0.01)
