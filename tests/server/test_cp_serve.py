"""`zturbo serve --cp 2 --device cpu`: a real server process whose DiT runs split over itself and one
spawned follower (gloo), against the single-engine server on the same tiny fp32 models.

- jobs on two DiT files, A, B, A, through POST /prompt give the single-engine server's pixels. Why
  equal: fp32 tiny models, the split forward does the single one's arithmetic except the GEMMs' row
  counts (tests/models/test_context_parallel.py: ≤ 1e-5 relative on the DiT output, measured 0 with
  MKL), far below the half step of 8-bit pixels after the VAE, as tests/test_parallel.py asserts for
  `generate --gpus 2`;
- the follower loads each file once (its engine caches them as rank 0's does): switching back to A
  sends a LOAD but reads nothing;
- a job with a LoRA on the MODEL fails with one line naming the LoRA loaders, and the next job runs;
- an interrupted job leaves the follower waiting for the next command: the next job runs;
- stopping the server (SIGTERM), idle or mid-job, ends the follower: no orphan process.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from websockets.sync.client import connect

from server.conftest import LiveServer, queue_prompt, real_engine_config, run_live
from server.procs import ServerProcess, serve_args
from zturbo.output.metadata import ModelFiles, api_graph
from zturbo.request import GenerationRequest, LoraChoice
from zturbo.server import create_app
from zturbo.testing.lora_files import block_modules, dit_shapes, random_factors, write_lora
from zturbo.testing.synthetic import TINY, write_comfy_models

pytestmark = pytest.mark.slow  # three servers, two with a spawned follower: ~60 s on two shared cores

A, B = "z_image_turbo_bf16.safetensors", "other_dit.safetensors"
JOBS = [(A, "a red fox", 1), (B, "a cat", 2), (A, "a red fox", 3)]


@pytest.fixture(scope="module")
def models(tiny_models_fp32: Path, tmp_path_factory) -> Path:
    """The fp32 tiny models, a second DiT (other weights) and a LoRA."""
    root = tmp_path_factory.mktemp("cp_models")
    shutil.copytree(tiny_models_fp32, root, dirs_exist_ok=True)
    other = write_comfy_models(
        tmp_path_factory.mktemp("cp_other"),
        TINY,
        dtype=torch.float32,
        seed=5,
        dit_prefix="model.diffusion_model.",
    )
    shutil.copy(other["dit"], root / "diffusion_models" / B)
    factors = random_factors(dit_shapes(), block_modules(), rank=2, seed=1)
    write_lora(root / "loras" / "a.safetensors", factors)
    return root


def prompt(dit: str, text: str, seed: int, *loras: LoraChoice) -> dict:
    files = ModelFiles(dit, "qwen_3_4b.safetensors", "ae.safetensors")
    request = GenerationRequest(text, width=32, height=32, steps=2, seed=seed, loras=loras)
    return api_graph(request, files, filename_prefix=f"cp_{seed}")


def run(http: str, graph: dict) -> dict:
    """Queue `graph`, wait for its history entry (success or not)."""
    return queue_prompt(http, graph, "cp", timeout=180)


def image_of(http: str, entry: dict) -> np.ndarray:
    assert entry["status"]["status_str"] == "success", entry["status"]
    (images,) = [out["images"] for out in entry["outputs"].values() if "images" in out]
    (image,) = images
    response = httpx.get(f"{http}/view", params=image, timeout=30)
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.fixture(scope="module")
def reference(models: Path, tmp_path_factory) -> list[np.ndarray]:
    """The single-engine server's images of JOBS (in-process, real uvicorn)."""
    live: LiveServer
    for live in run_live(create_app(real_engine_config(models, tmp_path_factory.mktemp("cp_reference")))):
        return [image_of(live.http, run(live.http, prompt(*job))) for job in JOBS]
    raise AssertionError("no server")


@pytest.fixture(scope="module")
def cp_server(models: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("cp_server")
    server = ServerProcess(cp_args(root, models), root / "server.log").start(timeout=180)
    try:
        yield server
    finally:
        server.stop()


def follower_lines(server: ServerProcess, pattern: str) -> list[str]:
    return [line for line in server.lines if line.startswith("INFO rank 1 ") and re.search(pattern, line)]


def test_cp_server_gives_the_single_engine_images_across_dit_switches(cp_server, reference):
    got = [image_of(cp_server.http, run(cp_server.http, prompt(*job))) for job in JOBS]
    assert reference[0].std() > 0 and not np.array_equal(reference[0], reference[1])  # B's weights differ
    for job, ours, theirs in zip(JOBS, got, reference, strict=True):
        assert np.array_equal(ours, theirs), job
    assert len(follower_lines(cp_server, rf"running {A}")) == 2  # A, B, A: two LOADs of A ...
    assert len(follower_lines(cp_server, rf"running {B}")) == 1
    assert len(follower_lines(cp_server, rf"loaded .*{A}")) == 1  # ... one read of its file
    assert len(follower_lines(cp_server, rf"loaded .*{B}")) == 1


def test_cp_server_refuses_a_lora_job_in_one_line_and_runs_the_next(cp_server, reference):
    entry = run(cp_server.http, prompt(A, "a red fox", 1, LoraChoice("a.safetensors", 0.8)))
    assert entry["status"]["status_str"] == "error"
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    message = error["exception_message"]
    assert "--cp 2" in message and "LoraLoader" in message and "\n" not in message.strip(), message
    assert error["node_type"] == "KSampler"  # refused where it would run, before any weight is patched
    assert np.array_equal(image_of(cp_server.http, run(cp_server.http, prompt(*JOBS[0]))), reference[0])
    # a LoraLoader at model strength 0 leaves the DiT as the followers hold it: it runs
    no_dit_patch = prompt(A, "a red fox", 1, LoraChoice("a.safetensors", 0.0, 1.0))
    assert np.array_equal(image_of(cp_server.http, run(cp_server.http, no_dit_patch)), reference[0])


def queue_long_job(server: ServerProcess) -> str:
    """A job of 5000 steps (it runs far longer than the tests wait): its prompt id once 2 steps ran."""
    graph = prompt(A, "a long one", 9)
    graph["8"]["inputs"]["steps"] = 5000  # the KSampler
    with connect(server.ws("cp_long")) as ws:
        body = {"prompt": graph, "client_id": "cp_long"}
        response = httpx.post(f"{server.http}/prompt", json=body, timeout=30)
        assert response.status_code == 200, response.text
        prompt_id = str(response.json()["prompt_id"])
        while True:  # sampling: the follower is in the loop of forwards
            raw = ws.recv(timeout=120)
            message = json.loads(raw) if isinstance(raw, str) else {}
            data = message.get("data", {})
            if (
                message.get("type") == "progress"
                and data.get("prompt_id") == prompt_id
                and data["value"] >= 2
            ):
                return prompt_id


def test_interrupting_a_cp_job_leaves_the_follower_ready_for_the_next(cp_server, reference):
    """The interrupt lands between two steps (the progress callback): the follower waits for the next
    command, and the next job (another DiT) gives the single-engine server's pixels."""
    prompt_id = queue_long_job(cp_server)
    assert httpx.post(f"{cp_server.http}/interrupt", json={}, timeout=30).status_code == 200
    deadline = time.monotonic() + 120
    while prompt_id not in (entry := httpx.get(f"{cp_server.http}/history/{prompt_id}", timeout=30).json()):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    events = [event for event, _ in entry[prompt_id]["status"]["messages"]]
    assert "execution_interrupted" in events, entry[prompt_id]["status"]
    assert np.array_equal(image_of(cp_server.http, run(cp_server.http, prompt(*JOBS[1]))), reference[1])


def cp_args(root: Path, models: Path) -> list[str]:
    args = serve_args(root, models, "--cp", "2")
    args.insert(args.index("serve"), "-v")  # INFO lines: rank 0's and the follower's
    return args


def test_stopping_the_cp_server_mid_job_ends_its_follower(models: Path, tmp_path):
    """The server's stop interrupts the sampling prompt at its next step; then the follower, waiting for
    a command, gets STOP (a prompt that outlived the worker's stop would get it killed instead:
    tests/test_parallel.py)."""
    server = ServerProcess(cp_args(tmp_path, models), tmp_path / "server.log").start(timeout=180)
    try:
        children = psutil.Process(server.pid).children(recursive=True)
        followers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        queue_long_job(server)
    finally:
        server.stop()
    _, alive = psutil.wait_procs(followers, timeout=30)
    assert not alive and followers, [p.pid for p in alive]
    assert "the 1 follower(s) stopped" in "".join(server.lines), "".join(server.lines)[-3000:]
