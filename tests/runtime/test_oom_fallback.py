"""A CUDA out-of-memory error mid-job: the engine retries once with the next lower plan.

The retried job's latents equal the plain engine's bit for bit: a lower plan streams the text encoder
through copies of its tensors, same modules, dtypes and shapes. The bf16 files computed in fp32
(`tiny_models`) make every weight a fresh allocation on both sides, like those copies; an fp32 file's
weights would stay mapped at the file's byte offsets, and MKL may round a GEMM on those differently
(tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from zturbo import engine as engine_module
from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.errors import GenerationError
from zturbo.generate import run_request
from zturbo.request import GenerationRequest
from zturbo.runtime import residency
from zturbo.runtime.device import Placement
from zturbo.runtime.memory import plan_memory
from zturbo.runtime.memory_manager import released_size
from zturbo.runtime.settings import EngineSettings

REQUEST = GenerationRequest("a boat", width=64, height=48, steps=2, seed=11, sampler="euler")
PLACEMENT = Placement.create("cpu", "fp32")
SETTINGS = EngineSettings("cpu", "fp32")


def ladder():
    """The unconstrained plan of the released model, with its whole fallback chain."""
    sizes = {kind: released_size(kind, 2) for kind in ("dit", "text_encoder", "vae")}
    return plan_memory(sizes, budget=None)


def fail_first(monkeypatch: pytest.MonkeyPatch, target, name: str, times: int = 1) -> list[int]:
    real, calls = getattr(target, name), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


@pytest.fixture(scope="module")
def expected(tiny_models):
    return run_request(Engine(SETTINGS), resolve_models(tiny_models), REQUEST)


def test_oom_while_sampling_retries_with_the_next_plan(monkeypatch, tiny_models, expected) -> None:
    engine = Engine(SETTINGS.replace(plan=ladder()))
    calls = fail_first(monkeypatch, engine_module.sampling, "sample")
    result = run_request(engine, resolve_models(tiny_models), REQUEST)
    assert len(calls) == 2 and engine.memory.plan.level == "te-streamed"
    _, clip, _ = engine.load_all(resolve_models(tiny_models))
    assert residency.streamer_of(clip.component.module) is not None  # re-placed in place
    assert torch.equal(result.latents, expected.latents)


def test_oom_while_decoding_moves_down_the_chain(monkeypatch, tiny_models, expected) -> None:
    plan = ladder().fallback  # te-streamed, untiled; next: tiled VAE
    engine = Engine(SETTINGS.replace(plan=plan))
    fail_first(monkeypatch, engine_module.vae_ops, "decode")
    result = run_request(engine, resolve_models(tiny_models), REQUEST)
    assert engine.memory.plan.level == "te-streamed+tiled-vae" and engine.memory.vae_tiled()
    assert torch.equal(result.latents, expected.latents)


def test_a_second_oom_fails_with_a_clear_message(monkeypatch, tiny_models) -> None:
    engine = Engine(SETTINGS.replace(plan=ladder()))
    fail_first(monkeypatch, engine_module.sampling, "sample", times=2)
    with pytest.raises(
        GenerationError, match=r"out of GPU memory while sampling with memory plan.*--vram 4G"
    ):
        run_request(engine, resolve_models(tiny_models), REQUEST)


def test_the_last_plan_has_no_fallback(monkeypatch, tiny_models) -> None:
    last = ladder()
    while last.fallback is not None:
        last = last.fallback
    engine = Engine(SETTINGS.replace(plan=last))
    fail_first(monkeypatch, engine_module.sampling, "sample")
    with pytest.raises(GenerationError, match="out of GPU memory while sampling"):
        run_request(engine, resolve_models(tiny_models), REQUEST)


def test_without_a_memory_manager_the_error_is_not_hidden(monkeypatch, tiny_models) -> None:
    fail_first(monkeypatch, engine_module.sampling, "sample")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_request(Engine(SETTINGS), resolve_models(tiny_models), REQUEST)


def test_replanning_never_climbs_back_above_the_fallback(monkeypatch, tiny_models) -> None:
    engine = Engine(SETTINGS.replace(vram="48G"))
    memory = engine.memory
    memory.ram = 64 * 2**30
    paths = resolve_models(tiny_models)
    run_request(engine, paths, REQUEST)
    assert memory.plan.level == "resident" and memory.plan.name == "48G"
    fail_first(monkeypatch, engine_module.sampling, "sample")
    run_request(engine, paths, REQUEST)
    assert memory.plan.level == "te-streamed"
    run_request(engine, paths, GenerationRequest("a boat", width=32, height=32, steps=1, sampler="euler"))
    assert memory.plan.level == "te-streamed"


def test_oom_while_loading_retries_the_load(monkeypatch, tiny_models, expected) -> None:
    engine = Engine(SETTINGS.replace(plan=ladder()))
    calls = fail_first(monkeypatch, engine_module.load, "load_dit")
    result = run_request(engine, resolve_models(tiny_models), REQUEST)
    assert len(calls) == 2 and engine.memory.plan.level == "te-streamed"
    assert torch.equal(result.latents, expected.latents)
