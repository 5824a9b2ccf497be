"""The engine's memory policy: the current plan, re-planning as files and image sizes become known,
and the one retry with a lower plan when CUDA runs out of memory anyway.

The engine owns one `MemoryManager` (never global). The plan is the one decision per component
(`MemoryPlan.residence`: where its weights live, which blocks stream, and so which speed mode it may
use); it is computed once per change of what it depends on (the files' sizes, the workload, the
budget setting), never per call. Components are registered when loaded with the function that
realises a residence for them; a new plan calls it for each component whose residence changed.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.errors import GenerationError
from zturbo.quant.linear import expands_compiled
from zturbo.runtime import residency
from zturbo.runtime.device import Placement
from zturbo.runtime.memory import (
    DEQUANT_COMPILED_BYTES,
    DEQUANT_EAGER_BYTES,
    GIB,
    MODEL_PATCH,
    MemoryPlan,
    Precision,
    Residence,
    Workload,
    plan_memory,
    system_ram,
    usable_vram,
)
from zturbo.runtime.sizes import ComponentSize, measure

log = logging.getLogger(__name__)
T = TypeVar("T")
LEVELS = ("resident", "te-streamed", "te-streamed+tiled-vae", "dit-streamed", "dit-streamed-all")

# The released model in bf16, for components not loaded yet when a plan is first needed.
_RELEASED = {
    DIT: ComponentSize((180_910_336,) * 2 + (176_962_816,) * 2 + (180_910_336,) * 30, 11_852_352, 0, 3840),
    TEXT_ENCODER: ComponentSize((100_925_696,) * 36, 388_958_720, 0, 2560),
    VAE: ComponentSize((), 83_819_683, 0, 0),
}


def released_size(kind: str, dtype_bytes: int) -> ComponentSize:
    size = _RELEASED[kind]
    return ComponentSize(
        tuple(b * dtype_bytes for b in size.blocks), size.other * dtype_bytes, 0, size.hidden
    )


def _residence(plan: MemoryPlan | None, kind: str) -> Residence | None:
    return None if plan is None else plan.residence(kind)


Realize = Callable[[object, Residence], None]  # (registered object, its residence under the new plan)


@dataclass
class MemoryManager:
    """`vram` ("auto", "8G", ...) re-plans as sizes and workloads change; `vram=None` keeps `plan` fixed."""

    placement: Placement
    vram: str | None = "auto"
    plan: MemoryPlan | None = None
    ram: int | None = field(default_factory=system_ram)
    sizes: dict[str, ComponentSize] = field(default_factory=dict)
    workload: Workload = Workload()
    _floor: int = 0  # ladder rung an out-of-memory error pushed us to; never plan above it again
    dit_compute: str | None = None  # how the DiT computes when not as its dtype implies (the NaN watchdog)
    plans_computed: int = 0  # how often `plan_memory` ran (once per change of what the plan depends on)
    _planned_for: tuple | None = field(default=None, repr=False)
    _components: list[tuple[str, weakref.ref, Realize]] = field(default_factory=list, repr=False)
    _measured: dict[tuple, ComponentSize] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def precision(self) -> Precision:
        """The placement's dtypes as the planner counts them (the fp16-safe DiT: fp32 residual)."""
        placement = self.placement
        compute = self.dit_compute or ("fp16" if placement.fp16_dit else "plain")
        return Precision(
            placement.dit_dtype().itemsize,
            placement.text_encoder_dtype(self.device).itemsize,
            placement.vae_dtype().itemsize,
            compute,
        )

    def _dtype(self, kind: str) -> torch.dtype:
        if kind == VAE:
            return self.placement.vae_dtype()
        if kind == TEXT_ENCODER:
            return self.placement.text_encoder_dtype(self.device)
        return self.placement.dit_dtype()

    def set_dit_compute(self, compute: str | None) -> None:
        """The DiT now computes `compute` ("fp32": the watchdog's fallback); plans count its activations."""
        self.dit_compute = compute
        self.replan()

    def dequant_bytes(self) -> int:
        """Transient bytes an element of a quantized matrix costs while expanded: the compiled CUDA
        dequantizer writes only the weight, eager ones (forced, or after a compiler failure) hold float32
        temporaries too."""
        return DEQUANT_COMPILED_BYTES if expands_compiled(self.device) else DEQUANT_EAGER_BYTES

    # --- planning ---

    def measure(self, kind: str, path: Path, weight_dtype: str = "default") -> None:
        """Read `path`'s header once per file version (a server plans every job)."""
        dtype = self._dtype(kind)
        stat = path.stat()
        key = (kind, path, stat.st_mtime_ns, stat.st_size, dtype, weight_dtype)
        if key not in self._measured:
            self._measured[key] = measure(path, kind, dtype=dtype, weight_dtype=weight_dtype)
        self.sizes[kind] = self._measured[key]

    def prepare(self, paths, workload: Workload, weight_dtype: str = "default") -> MemoryPlan | None:
        """Measure the three files of `paths` and plan for `workload` (before anything is loaded)."""
        self.measure(DIT, paths.dit, weight_dtype)
        self.measure(TEXT_ENCODER, paths.text_encoder)
        self.measure(VAE, paths.vae)
        self.workload = workload
        return self.replan()

    def set_patch_size(self, size: ComponentSize | None) -> None:
        """Loaded model patches (ControlNets), planned with the DiT: resident or streamed with it."""
        if size is None:
            self.sizes.pop(MODEL_PATCH, None)
        else:
            self.sizes[MODEL_PATCH] = size
        self.replan()

    def set_workload(self, workload: Workload) -> None:
        self.workload = workload
        self.replan()

    def residence(self, kind: str) -> Residence:
        """Where `kind` lives under the current plan (resident without one)."""
        return Residence() if self.plan is None else self.plan.residence(kind)

    def replan(self) -> MemoryPlan | None:
        """The plan for what is known now: computed only when sizes, workload or floor changed since
        the last one; loaded components whose residence changes are re-placed."""
        if self.vram is None:
            return self.plan
        precision = self.precision()
        sizes = {
            k: self.sizes.get(k) or released_size(k, self._dtype(k).itemsize) for k in (DIT, TEXT_ENCODER, VAE)
        }
        if MODEL_PATCH in self.sizes:
            sizes[MODEL_PATCH] = self.sizes[MODEL_PATCH]
        key = (tuple(sizes.values()), self.workload, self.vram, self._floor, precision, self.dequant_bytes())
        if key == self._planned_for:
            return self.plan
        self._planned_for = key
        self.plans_computed += 1
        budget, name = usable_vram(self.vram, self.device)
        plan = plan_memory(
            sizes,
            self.workload,
            budget=budget,
            name=name,
            ram=self.ram,
            dequant_bytes=self.dequant_bytes(),
            precision=precision,
        )
        while LEVELS.index(plan.level) < self._floor and plan.fallback is not None:
            plan = plan.fallback
        if self.plan is None or _decisions(plan) != _decisions(self.plan):
            log.info("%s", plan)
        self.use(plan)
        return plan

    def use(self, plan: MemoryPlan) -> None:
        """Switch to `plan`, moving only the components whose placement changes."""
        previous, self.plan = self.plan, plan
        self._apply(plan, previous)

    # --- components ---

    def register(self, kind: str, target: object, realize: Realize | None = None) -> None:
        """Track a loaded DiT or text encoder and realise the current plan's residence for it, then
        return the allocator's free segments. `realize(target, residence)` is the one function that
        puts the component in the form and place a residence asks for (the engine passes its own,
        which also switches speed modes); the default places a bare module (`residency.place`).

        Loading leaves freed segments behind: converting a resident bf16 DiT fuses Q‖K‖V and W1‖W3 into
        new tensors and frees the 8.4 GB of separate ones. Left cached, the components loaded next (the
        VAE's hundreds of small tensors) are cut out of them, and each keeps its 30-80 MB segment
        reserved for good: holes no large allocation (the text encoder's 0.7 GiB embedding, a streamed
        block's slot) can use, which the planner's headroom would otherwise have to cover.
        """
        realize = realize or self._place_module(kind)
        self._components.append((kind, weakref.ref(target), realize))
        if self.plan is not None:
            realize(target, self.residence(kind))
        self.placement.empty_cache()

    def _place_module(self, kind: str) -> Realize:
        def place(module: object, residence: Residence) -> None:
            residency.place(kind, module, residence, self.device)  # type: ignore[arg-type]

        return place

    def _apply(self, plan: MemoryPlan, previous: MemoryPlan | None) -> None:
        """Re-place the components whose placement changes.

        The allocator's cache is emptied before anything moves, not only after: weights moved onto the
        GPU would otherwise be cut out of the segments the last job's activations left cached, and each
        such weight keeps its whole segment reserved for as long as it stays resident (planner headroom,
        `memory.py`), so every re-plan would leave the card more fragmented than the one before.
        """
        live = [(kind, t, realize) for kind, ref, realize in self._components if (t := ref()) is not None]
        self._components = [(k, weakref.ref(t), r) for k, t, r in live]
        changed = [e for e in live if _residence(plan, e[0]) != _residence(previous, e[0])]
        if not changed:
            return
        gc.collect()  # a failed attempt's tensors may still be held by reference cycles
        self.placement.empty_cache()
        for kind, target, realize in sorted(changed, key=lambda e: e[0] != DIT):  # the DiT frees the most
            realize(target, self.residence(kind))
        self.placement.empty_cache()

    # --- running ---

    def vae_tiled(self) -> bool:
        return self.plan is not None and self.plan.vae_tiled

    def guard(self, op: Callable[[], T], what: str) -> T:
        """Run `op`; on CUDA out-of-memory switch to the next lower plan and run it once more."""
        try:
            return op()
        except torch.cuda.OutOfMemoryError as exc:
            fallback = self.plan.fallback if self.plan is not None else None
            if fallback is None:
                raise GenerationError(_oom_message(what, self.plan)) from exc
            usage = self._usage()
        gc.collect()  # the failed attempt's tensors went with its traceback
        self.placement.empty_cache()
        log.warning(
            "out of GPU memory while %s (%s); retrying once with the lower plan: %s",
            what,
            usage,
            fallback,
        )
        self._floor = max(self._floor, LEVELS.index(fallback.level))
        self.use(fallback)
        try:
            return op()
        except torch.cuda.OutOfMemoryError as exc:
            raise GenerationError(_oom_message(what, fallback)) from exc

    def _usage(self) -> str:
        """Allocator state at an out-of-memory error against the plan's estimate: what to compare when
        checking the planner's arithmetic (reserved − allocated is what fragmentation took)."""
        if self.device.type != "cuda":
            return "no CUDA statistics"
        stats = torch.cuda.memory_stats(self.device)
        allocated = stats.get("allocated_bytes.all.current", 0)
        reserved = stats.get("reserved_bytes.all.current", 0)
        peak = stats.get("allocated_bytes.all.peak", 0)
        planned = "" if self.plan is None else f", planned peak {self.plan.peak / GIB:.2f} GiB"
        return (
            f"allocated {allocated / GIB:.2f} GiB, reserved {reserved / GIB:.2f} GiB, "
            f"peak allocated {peak / GIB:.2f} GiB{planned}"
        )


def _decisions(plan: MemoryPlan) -> tuple:
    """What a plan decides (without its estimates): a change is worth logging."""
    return (plan.residence(DIT), plan.residence(TEXT_ENCODER), plan.vae_tiled)


def _oom_message(what: str, plan: MemoryPlan | None) -> str:
    where = f" with {plan}" if plan is not None else ""
    return (
        f"out of GPU memory while {what}{where}. Try a smaller --vram (e.g. --vram 4G), a GGUF or fp8 "
        "model file (or --weight-dtype fp8), a smaller image or batch, or close other programs using the GPU."
    )
