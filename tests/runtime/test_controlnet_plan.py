"""ControlNets in the memory plan: resident with the DiT, or streamed with it through two slots of
their own; their header-measured sizes match the loaded tensors."""

from __future__ import annotations

import torch

from zturbo.checkpoints.controlnet import load_controlnet
from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.control import combined, control_blocks, measure
from zturbo.runtime.memory import MODEL_PATCH, MemoryPlan, Workload, _peaks
from zturbo.runtime.sizes import ComponentSize
from zturbo.testing.controlnet_files import write_controlnet

GB = 1 << 30


def sizes(patch: ComponentSize | None) -> dict[str, ComponentSize]:
    out = {
        DIT: ComponentSize((GB // 3,) * 34, GB // 10, 0, 3840),
        TEXT_ENCODER: ComponentSize((GB // 5,) * 36, GB, 0, 2560),
        VAE: ComponentSize((), GB // 3),
    }
    if patch is not None:
        out[MODEL_PATCH] = patch
    return out


def test_plan_counts_the_controlnet():
    patch = ComponentSize((GB // 2,) * 17, GB // 100)
    streamed = MemoryPlan(level="dit-streamed-all", text_encoder="streamed", dit="streamed")
    for plan, extra in ((MemoryPlan(), patch.total), (streamed, patch.other + 2 * patch.max_block)):
        without = _peaks(plan, sizes(None), Workload(), 2)
        with_patch = _peaks(plan, sizes(patch), Workload(), 2)
        assert with_patch.peak - without.peak == extra


def test_measured_size_is_the_loaded_size(tmp_path):
    path = write_controlnet(tmp_path / "cn.safetensors", "2.1 Lite")
    size = measure(path, torch.bfloat16)
    module, _ = load_controlnet(path, dtype=torch.bfloat16)
    loaded = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert size.total == loaded
    blocks = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in control_blocks(module)]
    assert list(size.blocks) == blocks
    assert combined([size, size]).total == 2 * size.total and combined([]) is None
