"""What one prompt may be: cycles are refused naming the nodes, long chains validate and run (no
recursion), and huge prompts are refused fast without stalling anyone else. Real graph executor and
nodes, on the test-double engine of test_graph_integration.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.conftest import LiveServer, run_live, wait_until
from zturbo.server import ServerConfig, create_app

LOCAL = "http://127.0.0.1:8188"


def real_executor(config: ServerConfig):
    from server.test_graph_integration import FakeEngine, context_mod, executor_mod, registry_mod

    context = context_mod.ExecutionContext(
        models_dir=config.models_dir,
        output_dir=config.output_dir,
        input_dir=config.input_dir,
        temp_dir=config.temp_dir,
        engine=FakeEngine(),
    )
    return executor_mod.PromptExecutor(registry_mod.default_registry(context), context)


@pytest.fixture
def graph(config: ServerConfig) -> Iterator[TestClient]:
    config.max_request_bytes = 32 * 2**20
    config.input_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(config.input_dir / "in.png")
    with TestClient(create_app(config, executor=real_executor(config)), base_url=LOCAL) as client:
        yield client


def scale(source: str) -> dict:
    return {
        "class_type": "ImageScaleBy",
        "inputs": {"image": [source, 0], "upscale_method": "nearest-exact", "scale_by": 1.0},
    }


def chain(length: int) -> dict:
    prompt = {"0": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}}
    for i in range(1, length + 1):
        prompt[str(i)] = scale(str(i - 1))
    prompt["out"] = {"class_type": "PreviewImage", "inputs": {"images": [str(length), 0]}}
    return prompt


@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        (
            {
                "2": scale("3"),
                "3": scale("2"),
                "9": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
            },
            ["2", "3"],
        ),
        ({"5": scale("5"), "9": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}}, ["5"]),
        (
            {
                "0": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
                "a": scale("c"),
                "b": scale("a"),
                "c": scale("b"),
                "d": scale("0"),
                "9": {"class_type": "PreviewImage", "inputs": {"images": ["a", 0]}},
                "10": {"class_type": "PreviewImage", "inputs": {"images": ["d", 0]}},
            },
            ["a", "b", "c"],
        ),
    ],
)
def test_cycles_are_refused_naming_the_nodes(graph: TestClient, prompt: dict, named: list[str]) -> None:
    response = graph.post("/prompt", json={"prompt": prompt})
    body = response.json()
    text = json.dumps(body)
    if len(prompt) == 7:  # the acyclic branch still runs, the cycle is reported for its output
        assert response.status_code == 200 and body["node_errors"]
    else:
        assert response.status_code == 400
    assert "cycle" in text
    for node in named:
        assert f"'{node}'" in text or f"#{node}" in text or f'"{node}"' in text
    errors = [e for n in body["node_errors"].values() for e in n["errors"]]
    assert errors and all(e["message"] and e["details"] for e in errors)


@pytest.mark.parametrize("length", [600, 3000])
def test_long_chains_validate_and_run(graph: TestClient, length: int) -> None:
    response = graph.post("/prompt", json={"prompt": chain(length)})
    assert response.status_code == 200, response.text[:500]
    prompt_id = response.json()["prompt_id"]
    entry = wait_until(lambda: graph.get(f"/history/{prompt_id}").json(), timeout=120)[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    assert entry["outputs"]["out"]["images"]


def test_node_count_is_limited(graph: TestClient, config: ServerConfig) -> None:
    response = graph.post("/prompt", json={"prompt": chain(config.max_prompt_nodes)})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "prompt_too_large" and str(config.max_prompt_nodes) in error["message"]
    assert graph.get("/queue").json()["queue_pending"] == []


@pytest.fixture
def graph_live(config: ServerConfig) -> Iterator[LiveServer]:
    config.max_request_bytes = 32 * 2**20
    yield from run_live(create_app(config, executor=real_executor(config)))


def test_a_huge_prompt_is_refused_fast_and_stalls_no_one(
    graph_live: LiveServer, config: ServerConfig
) -> None:
    """10^5 nodes (13 MB): over the prompt size limit, refused from its Content-Length before a byte of
    it is parsed, while other clients are answered as usual."""
    huge = json.dumps({"prompt": chain(100_000)}).encode()
    assert len(huge) > config.max_prompt_bytes
    answers: list[httpx.Response] = []

    def post() -> None:
        answers.append(httpx.post(f"{graph_live.http}/prompt", content=huge, timeout=60))

    worst = 0.0
    with httpx.Client(base_url=graph_live.http, timeout=30) as other:
        usual = []
        for _ in range(20):
            tick = time.monotonic()
            other.get("/prompt")
            usual.append(time.monotonic() - tick)
        bound = max(0.5, 10 * max(usual))  # a loaded machine is slow for everyone, not only now
        sender = threading.Thread(target=post)
        start = time.monotonic()
        sender.start()
        while sender.is_alive():
            tick = time.monotonic()
            assert other.get("/prompt").status_code == 200
            worst = max(worst, time.monotonic() - tick)
        sender.join()
        elapsed = time.monotonic() - start
    (answer,) = answers
    assert answer.status_code == 413 and str(config.max_prompt_bytes) in answer.json()["error"]["message"]
    assert elapsed < 30, elapsed
    assert worst < bound, f"another client waited {worst:.2f} s (usually {max(usual):.3f} s)"


def test_the_largest_accepted_body_is_parsed_then_refused_by_node_count(graph_live: LiveServer) -> None:
    body = json.dumps({"prompt": chain(40_000)}).encode()  # ~5 MB: under the size limit
    response = httpx.post(f"{graph_live.http}/prompt", content=body, timeout=120)
    assert response.status_code == 400 and response.json()["error"]["type"] == "prompt_too_large"


def test_prompt_body_size_is_limited(config: ServerConfig) -> None:
    config.max_prompt_bytes = 64 * 1024
    with TestClient(create_app(config, executor=real_executor(config)), base_url=LOCAL) as client:
        response = client.post("/prompt", content=json.dumps({"prompt": chain(2000)}).encode())
        assert response.status_code == 413
        assert client.post("/settings", content=json.dumps({"k": "x" * 100_000}).encode()).status_code == 200
