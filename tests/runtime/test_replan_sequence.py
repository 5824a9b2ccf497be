"""One loaded engine re-planned as `benchmarks/gpu.py --vram-plans` does it: resident → text encoder
streamed → DiT streamed with most blocks resident → fewer → none, for bf16, Q8_0 and Q4_0 DiTs.

Every plan must compute exactly what the resident plan computed (on CPU copies are synchronous, so
this checks the re-placement logic: packing blocks that were resident, re-using packed copies, the
quantized layers' buffers). The GPU variant also exercises the side-stream copies into fresh slots.

Exact by construction on CPU: streamed blocks run the same modules on copies of their tensors (same
dtypes, shapes, strides; 256-byte offsets in fresh buffers). The bf16 files loaded in bf16 leave the
resident weights mapped at the files' byte offsets, which a GEMM may round differently from an aligned
copy (tests/conftest.py: MKL's fp32 GEMV does on AMD; the bf16 kernels measured here do not, but
nothing promises it), so the loaded models' weights are copied into fresh tensors (`fresh_weights`)
before the first plan: then every plan computes from fresh, 64-byte-aligned tensors.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.layout import ModelPaths, resolve_models
from zturbo.engine import Engine
from zturbo.generate import run_request
from zturbo.request import GenerationRequest
from zturbo.runtime import offload, residency
from zturbo.runtime.memory import MemoryPlan
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.synthetic import write_comfy_models
from zturbo.testing.synthetic_quant import GGUF_TINY, gguf_dit_from

WEIGHTS = {"bf16": None, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}


def _streamed(resident_blocks: int) -> MemoryPlan:
    return MemoryPlan(
        level="dit-streamed" if resident_blocks else "dit-streamed-all",
        text_encoder="streamed",
        dit="streamed",
        dit_resident_blocks=resident_blocks,
        pin_dit=True,
        pin_text_encoder=True,
    )


def _plans(blocks: int) -> list[MemoryPlan]:
    """The benchmark's order for one weights file (the GPU rows use a tiled VAE; the latents don't care)."""
    te = MemoryPlan(level="te-streamed", text_encoder="streamed", pin_text_encoder=True)
    return [MemoryPlan(), te, *(_streamed(k) for k in range(blocks - 1, -1, -1))]


def _models(root: Path, models=GGUF_TINY) -> dict[str, ModelPaths]:
    write_comfy_models(root, models, dtype=torch.bfloat16)
    paths = resolve_models(root)
    out = {}
    for name, qtype in WEIGHTS.items():
        dit = paths.dit if qtype is None else gguf_dit_from(paths.dit, root / f"dit_{name}.gguf", qtype)
        out[name] = dataclasses.replace(paths, dit=dit)
    return out


@pytest.fixture(scope="module")
def replan_models(tmp_path_factory) -> dict[str, ModelPaths]:
    return _models(tmp_path_factory.mktemp("replan"))


def _run_sequence(
    paths: ModelPaths, device: str, request: GenerationRequest, fresh_weights
) -> list[tuple[str, torch.Tensor]]:
    engine = Engine(EngineSettings(device, "bf16", plan=MemoryPlan()))  # a fixed plan, switched below
    memory = engine.memory
    model, clip, _ = engine.load_all(paths)  # resident: nothing streams or packs yet
    fresh_weights(model.transformer, clip.component.module)
    outputs = []
    for plan in _plans(len(residency.dit_blocks(engine.load_dit(paths.dit).transformer))):
        memory.use(plan)
        outputs.append(
            (f"{plan.level}/{plan.dit_resident_blocks}", run_request(engine, paths, request).latents)
        )
    return outputs


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "in-place"])
@pytest.mark.parametrize("weights", list(WEIGHTS))
def test_replanning_one_engine_keeps_the_resident_result(
    replan_models, fresh_weights, weights: str, pack: bool, monkeypatch
) -> None:
    # On CPU the streamer leaves tensors where they are unless told to pack them (as CUDA + pinned does).
    monkeypatch.setattr(residency, "BlockStreamer", functools.partial(offload.BlockStreamer, pack=pack))
    request = GenerationRequest("a cat", width=64, height=48, steps=2, seed=3, sampler="euler")
    (_, resident), *rest = _run_sequence(replan_models[weights], "cpu", request, fresh_weights)
    assert torch.isfinite(resident).all()
    for name, latents in rest:
        assert torch.equal(latents, resident), f"{weights}: plan {name} differs from resident"


@pytest.fixture(scope="module")
def medium_models(tmp_path_factory) -> dict[str, ModelPaths]:
    dit = dataclasses.replace(GGUF_TINY.dit, dim=1536, n_layers=8, n_heads=12, n_kv_heads=12)
    return _models(tmp_path_factory.mktemp("replan_medium"), dataclasses.replace(GGUF_TINY, dit=dit))


@pytest.mark.gpu
@pytest.mark.parametrize("weights", list(WEIGHTS))
def test_replanning_on_cuda_keeps_the_resident_result(medium_models, fresh_weights, weights: str) -> None:
    """Medium-size blocks (dim 1536, 8 layers) at 512²: the GPU still has queued work when the first
    streamed block's slots are allocated, which is when an unordered side-stream copy goes wrong."""
    paths = medium_models[weights]
    request = GenerationRequest("a cat", width=512, height=512, steps=2, seed=3, sampler="euler")
    (_, resident), *rest = _run_sequence(paths, "cuda", request, fresh_weights)
    assert torch.isfinite(resident).all()
    for name, latents in rest:
        assert torch.isfinite(latents).all(), f"{weights}: plan {name} produced NaN/inf"
        assert torch.allclose(latents, resident, rtol=1e-3, atol=1e-3), f"{weights}: plan {name} differs"
