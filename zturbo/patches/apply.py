"""Make a live component carry exactly a `PatchSet`, and take it off again bit for bit.

How a patch meets each kind of weight (the choice is per target, made here and nowhere else):

- **Plain float weights** (bf16/fp32 `nn.Parameter`s: resident on the GPU or the CPU, or streamed
  blocks between uses, which then point at their host copies): merged in place. The patched value is
  computed in float32 from the base (`adapter.merged`, all of the target's patches in order, rounded to
  the weight's dtype once) and written into the same storage, so tensor addresses never change:
  compiled blocks and captured CUDA graphs read the new values at their next run, and a streamed block
  copies the patched host rows to the GPU like any others. The rows' original values are kept on the
  CPU (`backups`, page-locked for fast copies): a new set computes from them, and weights no patch
  touches any more get them back, so unloading restores the base bit for bit. A target inside a fused
  matrix (a LoRA on `to_q`) touches only its rows of Q‖K‖V.
  Merging costs nothing per step, which is why it is the default.
- **Quantized weights** (GGUF, fp8: a layer that expands its weight on every call): merging would
  mean re-quantizing (lossy, and a restore would need the file again), so these get a side path
  instead: the layer is wrapped in a `PatchedLinear` that adds `x·downᵀ·upᵀ` (plain LoRAs: rank-r,
  cheap) or `x·Δᵀ` (LoKr/LoHa/DoRA/full differences, whose Δ = merged − base is computed once and held
  in the compute dtype: as large as the weight expanded) to the output rows the target owns. The
  side tensors live on the compute device (not in the block, so streaming never moves them).
  Unloading unwraps the layer. A module run through CUDA graphs must be re-captured after a wrap
  changes its structure (`PatchState.sync` returns whether it did).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from zturbo.errors import InputError
from zturbo.models.slots import WeightSlot
from zturbo.patches.base import Patch, PatchSet, fp32

log = logging.getLogger(__name__)
Resolve = Callable[[], dict[str, WeightSlot]]


class PatchedLinear(nn.Module):
    """A layer plus additive side terms on row ranges of its output (no parameters of its own)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.in_features = getattr(base, "in_features", None)
        self.out_features = getattr(base, "out_features", None)
        # (start, stop, down [r, in] or None, up [rows, r] or the dense delta [rows, in]); plain
        # attributes, not buffers: the block streamer must not pack them, `.to()` must not move them.
        self.terms: list[tuple[int, int, Tensor | None, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        for start, stop, down, up in self.terms:
            h = x.to(up.dtype)
            delta = (h @ down.t()) @ up.t() if down is not None else h @ up.t()
            y[..., start:stop] += delta.to(y.dtype)
        return y


@dataclass(frozen=True)
class Synced:
    """What a sync changed: weight values (copies of them elsewhere, such as a block streamer's device
    slots, are stale), and the layer structure (captured CUDA graphs are stale)."""

    weights: bool
    structure: bool


@dataclass
class PatchState:
    """What a component's live weights carry now, and how to take it off.

    `backups` holds the original rows of every weight merged in place now, keyed by name. A new set
    that patches the same weights again is computed from those originals (no restore-then-patch round
    trip, and no second backup): switching between two LoRAs on the same layers moves each weight's
    original rows to the device once. Weights the new set leaves alone are restored and their backups
    dropped, so nothing is kept once no patch touches them.
    """

    applied: PatchSet = field(default_factory=PatchSet)
    backups: dict[str, tuple[WeightSlot, Tensor]] = field(default_factory=dict)
    wrapped: list[tuple[nn.Module, str, PatchedLinear]] = field(default_factory=list)

    def sync(self, root: nn.Module, wanted: PatchSet, resolve: Resolve, device: torch.device) -> Synced:
        """Make `root` carry `wanted` and say what changed."""
        if wanted.key == self.applied.key:
            return Synced(False, False)
        structure_changed = bool(self.wrapped)
        self._unwrap()
        slots = resolve() if wanted or self.backups else {}
        plans = []
        for patch in wanted.patches:
            targets = [_slot(slots, t, patch) for t in patch.patch.targets]
            plans.append((patch, targets, all(slot.parameter is not None for slot in targets)))
        # The last patch that merges into each target: after it, the target is written and its float32
        # working copy dropped, so at most one patch's targets are held in float32 at a time.
        last = {t: i for i, (patch, _, merge) in enumerate(plans) if merge for t in patch.patch.targets}
        with torch.no_grad():
            self._restore(set(self.backups) - last.keys())
            work: dict[str, Tensor] = {}  # float32 values of the weights being merged
            for i, (patch, targets, merge) in enumerate(plans):
                if not merge:
                    self._side_path(root, patch, targets, device)
                    continue
                self._merge(patch, targets, work)
                for target in [t for t in patch.patch.targets if last[t] == i]:
                    rows = slots[target].rows(slots[target].parameter)  # type: ignore[arg-type]
                    rows.copy_(work.pop(target).to(rows.dtype))
        if wanted:
            log.info(
                "patched %d weights in place and %d layers with side paths", len(last), len(self.wrapped)
            )
        self.applied = wanted
        return Synced(True, structure_changed or bool(self.wrapped))

    def clear(self, root: nn.Module) -> None:
        """Restore every patched weight from its backup and unwrap every side path."""
        self._unwrap()
        with torch.no_grad():
            self._restore(set(self.backups))
        self.applied = PatchSet()

    def _restore(self, names: set[str]) -> None:
        for name in names:
            slot, backup = self.backups.pop(name)
            slot.rows(slot.parameter).copy_(backup)  # type: ignore[arg-type]

    def _unwrap(self) -> None:
        for parent, name, wrapper in reversed(self.wrapped):
            setattr(parent, name, wrapper.base)
        self.wrapped.clear()

    def _merge(self, patch: Patch, slots: list[WeightSlot], work: dict[str, Tensor]) -> None:
        """Apply one patch to the float32 working values of its targets (all of them at once: a LoRA
        on fused qkv, or DoRA's norms, see the whole matrix), starting each from its original rows."""
        names = patch.patch.targets
        for name, slot in zip(names, slots, strict=True):
            if name not in work:
                where = slot.parameter.device  # type: ignore[union-attr]
                work[name] = self._original(name, slot).to(where, non_blocking=True).float()  # copy, then widen
        merged = patch.patch.adapter.merged(torch.cat([work[n] for n in names]), patch.strength)
        for name, value in zip(names, merged.split(list(patch.patch.rows)), strict=True):
            work[name] = value

    def _original(self, name: str, slot: WeightSlot) -> Tensor:
        """The weight's unpatched rows: its backup, made now (page-locked on CUDA) if it has none."""
        if name not in self.backups:
            rows = slot.rows(slot.parameter)  # type: ignore[arg-type]
            backup = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=rows.is_cuda)
            backup.copy_(rows)
            self.backups[name] = (slot, backup)
        return self.backups[name][1]

    def _side_path(self, root: nn.Module, patch: Patch, slots: list[WeightSlot], device) -> None:
        """Add the patch to the outputs of its targets' layers (see the module docstring)."""
        rows = list(patch.patch.rows)
        bounds = [(s.start, s.start + n) for s, n in zip(slots, rows, strict=True)]
        factors = patch.patch.adapter.factors()
        if factors is not None:
            up, down = factors
            for slot, (start, stop), up_rows in zip(slots, bounds, up.split(rows), strict=True):
                dtype = _compute_dtype(slot)
                term: tuple[int, int, Tensor | None, Tensor] = (
                    start,
                    stop,
                    down.to(device, dtype),
                    (up_rows * patch.strength).to(device, dtype),
                )
                self._wrapper(root, slot.module).terms.append(term)
            return
        base = torch.cat([_expanded(slot, device) for slot in slots])
        delta = patch.patch.adapter.merged(base, patch.strength) - base
        for slot, (start, stop), part in zip(slots, bounds, delta.split(rows), strict=True):
            term = (start, stop, None, part.to(device, _compute_dtype(slot)))
            self._wrapper(root, slot.module).terms.append(term)

    def _wrapper(self, root: nn.Module, layer: nn.Module) -> PatchedLinear:
        for _, _, wrapper in self.wrapped:
            if wrapper.base is layer:
                return wrapper
        parent, name = _parent_of(root, layer)
        wrapper = PatchedLinear(layer)
        setattr(parent, name, wrapper)
        self.wrapped.append((parent, name, wrapper))
        return wrapper


def _slot(slots: dict[str, WeightSlot], target: str, patch: Patch) -> WeightSlot:
    if target not in slots:
        raise InputError(f"{patch.source or 'a patch'}: the model has no weight {target!r}")
    return slots[target]


def _compute_dtype(slot: WeightSlot) -> torch.dtype:
    param = slot.parameter
    return param.dtype if param is not None else getattr(slot.module, "compute_dtype", torch.float32)


def _expanded(slot: WeightSlot, device: torch.device) -> Tensor:
    """A target's current weight rows in float32, expanded on `device` if the layer is quantized."""
    param = slot.parameter
    if param is not None:
        return fp32(slot.rows(param)).to(device)
    return fp32(slot.rows(slot.module.dequantize_weight(device)))  # type: ignore[operator]


def _parent_of(root: nn.Module, layer: nn.Module) -> tuple[nn.Module, str]:
    for module in root.modules():
        for name, child in module._modules.items():
            if child is layer:
                return module, name
    raise ValueError("layer not found in its model")
