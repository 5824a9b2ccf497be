"""Off CUDA (CPU here, Apple MPS for users) no code path may touch CUDA-only APIs.

We have no Mac to test MPS on, so this is the guard instead: every CUDA-only entry point of torch is
replaced by one that fails the test, and whole jobs run on the CPU through each speed mode, a fp8
weight dtype, a GGUF file and a streamed memory plan — the code paths where CUDA streams, events,
graphs, pinned memory, capability queries and memory statistics live.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.generate import run_request
from zturbo.request import GenerationRequest
from zturbo.runtime.memory import MemoryPlan
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.synthetic_quant import gguf_dit_from

CUDA_ONLY = (
    "Stream",
    "Event",
    "current_stream",
    "synchronize",
    "graph",
    "CUDAGraph",
    "get_device_capability",
    "get_device_name",
    "mem_get_info",
    "memory_reserved",
    "memory_allocated",
    "max_memory_allocated",
    "empty_cache",
    "cudart",
    "set_per_process_memory_fraction",
)


@pytest.fixture
def no_cuda(monkeypatch):
    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"torch.cuda.{name} called on a CPU job")

        return call

    for name in CUDA_ONLY:
        monkeypatch.setattr(torch.cuda, name, refuse(name))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


REQUEST = GenerationRequest("a lighthouse, 灯塔", width=64, height=64, steps=2, seed=3)


@pytest.mark.parametrize("speed", ["reference", "eager", "max"])
@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn_fast"])
def test_cpu_jobs_never_call_cuda(no_cuda, tiny_models, speed, weight_dtype):
    engine = Engine(EngineSettings("cpu", "fp32", speed=speed, weight_dtype=weight_dtype))
    result = run_request(engine, resolve_models(tiny_models), REQUEST)
    assert torch.isfinite(result.images).all()


def test_streamed_gguf_plan_on_cpu_never_calls_cuda(no_cuda, tiny_models, tmp_path):
    """The tiny model fits any budget, so the streamed plan (pinned, as on a small card) is forced."""
    paths = resolve_models(tiny_models)
    paths = dataclasses.replace(paths, dit=gguf_dit_from(paths.dit, tmp_path / "dit_q8.gguf", Q.Q8_0))
    engine = Engine(EngineSettings("cpu", "fp32", plan=MemoryPlan()))  # a fixed plan: no re-planning
    memory = engine.memory
    engine.load_all(paths)
    streamed = MemoryPlan(
        level="dit-streamed", text_encoder="streamed", dit="streamed", pin_dit=True, pin_text_encoder=True
    )
    memory.use(streamed)
    result = run_request(engine, paths, REQUEST)
    assert memory.plan == streamed
    assert torch.isfinite(result.images).all()
