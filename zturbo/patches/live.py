"""Patches on the engine's loaded components: where reference weights live in them, and the sync.

A component's `PatchState` is kept with the component itself (`LoadedComponent.runtime`), so every
MODEL/CLIP value made from it, whatever patches it asks for, goes through the same record of what the
live weights carry now.
"""

from __future__ import annotations

from torch import nn

from zturbo.models.slots import WeightSlot, module_slots
from zturbo.models.zimage_convert import dit_slots
from zturbo.models.zimage_dit import ZImageDiT
from zturbo.patches.apply import PatchState, Synced
from zturbo.patches.base import PatchSet

_STATE = "patches"


def slots_of(module: nn.Module) -> dict[str, WeightSlot]:
    """Reference-layout weight name → where it lives: zturbo's fused DiT (also inside a CUDA-graph
    wrapper), or a reference module (diffusers' DiT, transformers' Qwen3) name for name."""
    inner = getattr(module, "dit", module)
    return dit_slots(inner) if isinstance(inner, ZImageDiT) else module_slots(module)


def reference_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape each reference-layout weight has (what a LoRA file is checked against)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, slot in slots_of(module).items():
        param = slot.parameter
        if param is not None:
            shapes[name] = tuple(slot.rows(param).shape)
        else:  # a quantized layer: rows of its (stacked) weight
            stop = slot.stop if slot.stop is not None else slot.module.out_features
            shapes[name] = (int(stop) - slot.start, int(slot.module.in_features))  # type: ignore[arg-type]
    return shapes


def patch_state(component) -> PatchState:
    """The record of what `component`'s live weights carry (a `LoadedComponent`)."""
    return component.runtime.setdefault(_STATE, PatchState())


def sync(component, patches: PatchSet, device) -> Synced:
    """Make `component.module` carry exactly `patches` (see `PatchState.sync`)."""
    module = component.module
    root = getattr(module, "dit", module)
    return patch_state(component).sync(root, patches, lambda: slots_of(module), device)
