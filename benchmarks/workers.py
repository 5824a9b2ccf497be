"""Throughput of the worker pool: images/s of `zturbo serve` with 1 and with N workers.

    python benchmarks/workers.py --workers 1 8 [--jobs 32] [--size 1024] [--steps 8]

`--workers 0` adds a row for the server without a pool (its one in-process engine).
On CUDA: full-size random-weight models (written once to --models-dir), one worker per GPU, 1024²,
8 steps (the Z-Image-Turbo template over the ComfyUI API, as clients send it). On a CPU-only machine:
the tiny test models, 64², 2 steps (for checking the script, not for numbers). For each worker count
a fresh server on a fresh local Ray instance is started; every worker first runs one warm-up prompt
(model loading is not counted), then --jobs prompts with distinct seeds are queued at once and timed
from the first submission to the last history entry. Prints a table and writes
benchmarks/results/<date>-<device>-workers.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch

from zturbo.graph.formats import load_workflow_file
from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig, create_app
from zturbo.server.uvicorn_setup import uvicorn_config
from zturbo.templates import template_path


def template_prompt(seed: int, size: int, steps: int) -> dict:
    """The shipped Z-Image-Turbo template in API format, at `size`² with `steps` steps."""
    path = template_path("image_z_image_turbo.json")
    assert path is not None, "the shipped Z-Image-Turbo template is missing"
    prompt, _ = load_workflow_file(path)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptySD3LatentImage":
            inputs.update(width=size, height=size)
        elif node["class_type"] == "KSampler":
            inputs.update(seed=seed, steps=steps)
    return prompt


def _wait(http: str, prompt_ids: list[str], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    entries: dict[str, dict] = {}
    while len(entries) < len(prompt_ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(prompt_ids) - len(entries)} prompts did not finish in {timeout:.0f}s")
        for prompt_id in prompt_ids:
            if prompt_id not in entries:
                body = httpx.get(f"{http}/history/{prompt_id}", timeout=60).json()
                entries.update(body)
        time.sleep(0.05)
    return [entries[p] for p in prompt_ids]


def throughput(http: str, prompts: list[dict], timeout: float = 3600) -> dict[str, Any]:
    """Queue `prompts` at once on the server at `http`; images/s from first submission to last result."""
    started = time.perf_counter()
    ids = [
        httpx.post(f"{http}/prompt", json={"prompt": p, "client_id": "bench"}, timeout=60).json()["prompt_id"]
        for p in prompts
    ]
    entries = _wait(http, ids, timeout)
    seconds = time.perf_counter() - started
    failed = [e["status"] for e in entries if e["status"]["status_str"] != "success"]
    if failed:
        raise SystemExit(f"{len(failed)} prompts failed: {failed[0]}")
    return {"images": len(ids), "seconds": round(seconds, 3), "images_per_s": round(len(ids) / seconds, 4)}


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app on real uvicorn (127.0.0.1, a free port) in a thread, as `zturbo serve` runs it."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)


def measure(args: argparse.Namespace, workers: int, models_dir: Path, device: str) -> dict[str, Any]:
    """One row: a fresh Ray instance and server with `workers` workers; warm-up, then the timed jobs."""
    import ray

    gpu = device != "cpu"
    if workers:  # 0: no pool, the one in-process engine (`zturbo serve` without flags)
        ray.init(num_cpus=None if gpu else workers, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            config = ServerConfig(
                port=0,
                models_dir=models_dir,
                output_dir=Path(scratch) / "output",
                input_dir=Path(scratch) / "input",
                engine=EngineSettings(device, vram="auto"),
                workers=workers,
            )
            with serving(create_app(config)) as http:
                warm = [template_prompt(10_000 + n, args.size, args.steps) for n in range(max(1, workers))]
                throughput(http, warm)  # one per worker (each takes one: the queue hands them out)
                prompts = [template_prompt(n, args.size, args.steps) for n in range(args.jobs)]
                row = throughput(http, prompts)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return {"workers": workers, "size": args.size, "steps": args.steps, **row}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, max(1, torch.cuda.device_count())])
    parser.add_argument("--jobs", type=int, default=None, help="timed prompts per row (default 4 per worker)")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "zturbo-bench-models"
    )
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    args.size = args.size or (1024 if cuda else 64)
    args.steps = args.steps or (8 if cuda else 2)
    args.jobs = args.jobs or 4 * max(args.workers)
    models_dir = write_models(args.models_dir, cuda)
    rows = [measure(args, n, models_dir, "cuda" if cuda else "cpu") for n in args.workers]
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / base, 3)
        print(f"{row['workers']:>3} workers  {row['images_per_s']:>8.3f} images/s  x{row['speedup']:.2f}")
    device = torch.cuda.get_device_name() if cuda else "cpu"
    today = dt.date.today().isoformat()
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{today}-{device.replace(' ', '_')}-workers.json"
    data = {"device": device, "gpus": torch.cuda.device_count(), "date": today, "rows": rows}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"wrote {path}")


def write_models(models_dir: Path, full_size: bool) -> Path:
    """Full-size random weights on CUDA, the tiny test models otherwise (written once)."""
    if full_size:
        from zturbo.bench.harness import write_full_size_models

        write_full_size_models(models_dir)
        return models_dir
    from zturbo.testing.synthetic import TINY, write_comfy_models

    tiny = models_dir.with_name(models_dir.name + "-tiny")
    if not (tiny / "diffusion_models").is_dir():
        write_comfy_models(tiny, TINY, dtype=torch.bfloat16)
    return tiny


if __name__ == "__main__":
    main()
