"""What a patch is, and the ordered set of them a MODEL or CLIP value carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class AdapterLike(Protocol):
    """Computes a patched weight (see zturbo.lora.adapters)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def factors(self) -> tuple[Tensor, Tensor] | None:
        """(up·scale [out, r], down [r, in]) when the delta is exactly their product, else None."""

    def merged(self, weight: Tensor, strength: float) -> Tensor:
        """The patched weight, in float32, from the concatenated targets' float32 base weight."""


class WeightPatchLike(Protocol):
    """One change to one or more reference-layout weights (zturbo.lora.read.WeightPatch, frozen: the
    attributes are read-only here too)."""

    @property
    def component(self) -> str: ...
    @property
    def targets(self) -> tuple[str, ...]: ...
    @property
    def adapter(self) -> AdapterLike: ...
    @property
    def rows(self) -> tuple[int, ...]: ...


@dataclass(frozen=True, eq=False)
class Patch:
    """A weight patch at a strength, with the label (file name) it is reported under."""

    patch: WeightPatchLike
    strength: float
    source: str = ""


@dataclass(frozen=True)
class PatchSet:
    """The patches a component runs with, in the order they apply. Hashable by identity of the patch
    objects and their strengths, so "same set as last time" costs nothing to check."""

    patches: tuple[Patch, ...] = ()

    def for_component(self, component: str) -> PatchSet:
        return PatchSet(tuple(p for p in self.patches if p.patch.component == component))

    def plus(self, patches: list[Patch]) -> PatchSet:
        """This set followed by `patches` (a LoRA loader node adds its file's patches)."""
        return PatchSet((*self.patches, *(p for p in patches if p.strength != 0)))

    @property
    def key(self) -> tuple:
        return tuple((id(p.patch), float(p.strength)) for p in self.patches)

    def __bool__(self) -> bool:
        return bool(self.patches)


def fp32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32)
