"""MemoryManager housekeeping around the allocator: when the cache is emptied, what an OOM logs, and
which dequantization cost the plan is sized for."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER
from zturbo.quant import linear as quant
from zturbo.runtime import memory_manager as mm
from zturbo.runtime.device import Placement
from zturbo.runtime.memory import DEQUANT_COMPILED_BYTES, DEQUANT_EAGER_BYTES, MemoryPlan
from zturbo.runtime.memory_manager import MemoryManager


@dataclass(frozen=True)
class RecordingPlacement(Placement):
    """A CPU placement that records when the allocator cache would be emptied."""

    events: list = field(default_factory=list, compare=False)

    def empty_cache(self) -> None:
        self.events.append("empty_cache")


@pytest.fixture
def manager(monkeypatch) -> MemoryManager:
    placement = RecordingPlacement(torch.device("cpu"))
    manager = MemoryManager(placement, vram=None)
    def recorder(self, kind):  # the default realize step, recording instead of moving weights
        return lambda target, residence: placement.events.append(kind)

    monkeypatch.setattr(MemoryManager, "_place_module", recorder)
    return manager


STREAMED = MemoryPlan(level="dit-streamed-all", text_encoder="streamed", dit="streamed", vae_tiled=True)


def test_replacing_empties_the_cache_before_and_after_moving(manager: MemoryManager) -> None:
    """Weights moved onto the GPU must not be cut out of the last job's cached activation segments."""
    dit, te = nn.Linear(2, 2), nn.Linear(2, 2)
    manager.register(DIT, dit)
    manager.register(TEXT_ENCODER, te)
    events = manager.placement.events
    assert events == ["empty_cache", "empty_cache"]  # no plan yet: nothing placed, loading leftovers freed
    events.clear()
    manager.use(MemoryPlan())
    assert events == ["empty_cache", DIT, TEXT_ENCODER, "empty_cache"]
    events.clear()
    manager.use(STREAMED)
    assert events == ["empty_cache", DIT, TEXT_ENCODER, "empty_cache"]
    events.clear()
    manager.use(STREAMED)  # unchanged placement: nothing moves, the cache is left alone
    assert events == []


def test_registering_frees_what_loading_left_cached(manager: MemoryManager) -> None:
    """The fused DiT conversion frees the separate Q/K/V/W1/W3 weights: return them before the next load."""
    manager.use(MemoryPlan())
    manager.placement.events.clear()
    manager.register(DIT, nn.Linear(2, 2))
    assert manager.placement.events == [DIT, "empty_cache"]


def test_an_oom_logs_the_allocator_state_and_retries_on_a_clean_cache(manager, caplog) -> None:
    fallback = STREAMED
    manager.use(MemoryPlan(level="te-streamed", text_encoder="streamed", fallback=fallback))
    manager.placement.events.clear()
    calls = []

    def op() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "done"

    with caplog.at_level(logging.WARNING, logger=mm.__name__):
        assert manager.guard(op, "encoding the prompt") == "done"
    assert manager.plan.level == "dit-streamed-all"
    assert manager.placement.events[0] == "empty_cache"  # before re-placing for the retry
    message = caplog.records[-1].getMessage()
    assert "encoding the prompt (no CUDA statistics)" in message and "dit-streamed-all" in message


def test_usage_reports_allocated_reserved_and_the_plan(monkeypatch) -> None:
    manager = MemoryManager(Placement(torch.device("cuda", 0)), vram=None, plan=MemoryPlan(peak=10 << 30))
    stats = {
        "allocated_bytes.all.current": 10 << 30,
        "reserved_bytes.all.current": 12 << 30,
        "allocated_bytes.all.peak": 11 << 30,
    }
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: stats)
    assert manager._usage() == (
        "allocated 10.00 GiB, reserved 12.00 GiB, peak allocated 11.00 GiB, planned peak 10.00 GiB"
    )


def test_plans_size_the_expansion_by_the_dequantizer_that_will_run(monkeypatch) -> None:
    quant.reset_dequantizers()
    cpu = MemoryManager(Placement(torch.device("cpu")), vram=None)
    cuda = MemoryManager(Placement(torch.device("cuda", 0)), vram=None)
    assert cpu.dequant_bytes() == DEQUANT_EAGER_BYTES
    assert cuda.dequant_bytes() == DEQUANT_COMPILED_BYTES
    monkeypatch.setenv(quant.EAGER_ENV, "1")
    assert cuda.dequant_bytes() == DEQUANT_EAGER_BYTES
    monkeypatch.delenv(quant.EAGER_ENV)
    monkeypatch.setattr(quant, "_BROKEN", {"fp8"})  # a type fell back to eager: size for eager
    assert cuda.dequant_bytes() == DEQUANT_EAGER_BYTES
