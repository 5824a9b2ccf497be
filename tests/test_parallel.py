"""`zturbo generate --gpus 2 --device cpu`: one spawned follower (gloo), the same PNG as one process;
`serve --cp` refusals at startup; a forward failing on rank 0 restarts the followers.

fp32 tiny models: the split forward differs from the single one only in the GEMMs' row counts (see
tests/models/test_context_parallel.py), ≤ 1e-5 relative on the DiT output, far below the half
step of 8-bit pixels after the VAE, so the PNGs' pixels must be equal.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from typer.testing import CliRunner

from zturbo import parallel
from zturbo.checkpoints.detect import DIT
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.cli import app
from zturbo.engine import Engine
from zturbo.errors import InputError
from zturbo.models.context_parallel import ContextParallel
from zturbo.runtime.settings import EngineSettings
from zturbo.server.app import _close_group as close_group
from zturbo.server.config import ServerConfig


def generate(models, out, *extra: str) -> np.ndarray:
    args = ["generate", "一只猫", "--width", "48", "--height", "32", "--steps", "8", "--seed", "7"]
    args += ["--models-dir", str(models), "--out", str(out), "--device", "cpu", *extra]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (png,) = out.glob("*.png")
    return np.asarray(Image.open(png))


def test_generate_on_two_processes_matches_one(tiny_models_fp32, tmp_path):
    one = generate(tiny_models_fp32, tmp_path / "one")
    two = generate(tiny_models_fp32, tmp_path / "two", "--gpus", "2")
    assert one.std() > 0 and np.array_equal(one, two)


def test_gpus_refuses_what_it_cannot_split_in_one_line(tiny_models_fp32, tmp_path):
    args = ["generate", "x", "--models-dir", str(tiny_models_fp32), "--out", str(tmp_path), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--gpus", "2", "--step-cache", "0.1"])
    assert isinstance(result.exception, InputError)  # main() prints it as one line (tests/test_cli_errors.py)
    assert "--step-cache" in str(result.exception) and "\n" not in str(result.exception)
    assert not list(tmp_path.glob("*.png"))


def serve_error(tmp_path, *extra: str) -> str:
    args = [
        "serve",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "out"),
        "--input-dir",
        str(tmp_path / "in"),
    ]
    result = CliRunner().invoke(app, [*args, *extra])
    assert isinstance(result.exception, InputError), (result.exception, result.output)
    assert "\n" not in str(result.exception)
    return str(result.exception)


def test_serve_cp_refuses_workers_ray_and_what_it_cannot_split_at_startup(tmp_path):
    assert "--workers/--ray" in serve_error(tmp_path, "--cp", "2", "--workers", "2")
    assert "--workers/--ray" in serve_error(tmp_path, "--cp", "2", "--ray", "10.0.0.5:6379")
    assert "--step-cache" in serve_error(tmp_path, "--cp", "2", "--step-cache", "0.1")
    assert "at most 30" in serve_error(tmp_path, "--cp", "31")
    assert "--cp must be" in str(pytest.raises(InputError, ServerConfig, cp=0).value)


def test_a_forward_failing_on_rank_0_restarts_the_followers_and_the_next_runs(tiny_models_fp32, monkeypatch):
    """Rank 0 fails between the attention's two all-to-alls (the follower is left inside the second):
    the group restarts, and the next forward (on the same DiT, sent again with LOAD) gives one
    process's output within test_context_parallel.py's PARITY (1e-5 relative: only the GEMMs' row
    counts differ, see there)."""
    path = tiny_models_fp32 / COMFY_FILES[DIT]
    gen = torch.Generator().manual_seed(0)
    x, t, caption = (
        torch.randn(1, 16, 4, 4, generator=gen),
        torch.rand(1, generator=gen),
        torch.randn(5, 32, generator=gen),
    )
    with torch.inference_mode():
        expected = Engine(EngineSettings("cpu")).load_dit(path).transformer(x, t, [caption])
    engine = Engine(EngineSettings("cpu"))
    group = parallel.start(2, engine.settings, cpu=True, flag="--cp")
    try:
        parallel.attach(engine, group)
        model = engine.load_dit(path)
        failed = []

        def fail_once(self, *args):
            if not failed:
                failed.append(True)
                raise RuntimeError("injected failure on rank 0")
            return to_sequence(self, *args)

        to_sequence = ContextParallel._to_sequence
        monkeypatch.setattr(ContextParallel, "_to_sequence", fail_once)
        with torch.inference_mode(), pytest.raises(RuntimeError, match="injected"):
            model.transformer(x, t, [caption])
        assert group.restarts == 1 and group.context.selected is None
        with torch.inference_mode():
            got = model.transformer(x, t, [caption])
        assert float((got - expected).norm() / expected.norm()) <= 1e-5
    finally:
        group.close()


def test_a_server_stopping_under_a_running_prompt_kills_the_followers():
    """`serve`'s end when the worker thread outlived its stop (a forward may be inside a collective):
    the followers are killed, not sent a STOP."""
    group = parallel.start(2, EngineSettings("cpu"), cpu=True, flag="--cp")
    followers = list(group.processes.processes)
    try:
        close_group(group, SimpleNamespace(alive=True))
        assert all(not p.is_alive() and p.exitcode != 0 for p in followers)
    finally:
        dist.destroy_process_group()
