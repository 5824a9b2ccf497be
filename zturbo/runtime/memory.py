"""VRAM and RAM planning: where each component's weights live, for a budget, the files and the image.

A plan is one rung of a ladder, fastest first; each rung trades speed for VRAM:

1. everything resident on the GPU;
2. text encoder streamed layer by layer for each prompt, then nothing of it kept;
3. VAE decoding in 512-pixel tiles (diffusers' tiled decode; seams are blended, so pixels differ
   slightly from a full decode, which is why this rung comes after the exact ones);
4. DiT blocks streamed from (pinned) RAM, as many blocks kept resident as the budget allows;
5. DiT fully streamed.

The first rung that fits the usable budget is chosen; the rungs below it are its `fallback` chain,
which the engine takes once when CUDA runs out of memory anyway. Peaks are computed per phase (encode,
sample, decode) from the files' real sizes (`sizes.py`) and activation estimates for the resolution and
batch, calibrated on the H100 smoke run (1024², bf16: DiT ≈ 0.9 GB, VAE decode ≈ 3.9 GiB untiled). The
plan never changes the weights: quantizing is the user's choice (`--weight-dtype fp8` or a GGUF file),
and the planner sizes whatever was chosen.

Dtypes come from the placement as a `Precision` (bytes per element of each component, and how the
DiT computes): on a GPU without bf16 the DiT's weights are fp16 (as large as bf16) but its residual
stream and norm temporaries are fp32 (the fp16-safe path: more activation memory, estimated, not yet
calibrated on a GPU), and the VAE decodes in fp32 (twice bf16's decode memory, so small cards tile it
sooner); the text encoder stays bf16.

A phase's estimate counts the bytes its tensors occupy; a rung fits when every phase's estimate plus
its headroom (`phase_headroom`) fits the budget. The headroom is for what tensor sizes do not show:
torch's caching allocator rounds every large allocation up to 2 MiB and keeps freed blocks inside the
segments they were cut from, so a long-lived tensor placed in a segment something else freed (the
VAE's weights in the unfused Q/K/V weights' old segments, a streamed DiT's slots, RoPE tables) pins
the whole segment, and the large allocations of encoding a prompt (the text encoder's 0.7 GiB
embedding, its two 0.19 GiB layer slots) need fresh segments beside it. On the H100 under
per-process caps (benchmarks/RESULTS.md, 2026-11-25) bf16 plans filled to the byte ran out of memory
while encoding with 1.4-1.7 GiB of the cap unallocated: the estimates of allocated bytes were upper
bounds (measured peaks at or under them), the budget had no room for the rest. `MemoryManager` now
returns free segments before placing weights, which removes the worst of it; the headroom covers the
remainder.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

import torch

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.errors import InputError
from zturbo.runtime.sizes import ComponentSize

GIB = 1 << 30
MIB = 1 << 20
VRAM_CHOICES = ("auto", "4G", "6G", "8G", "12G", "16G", "24G", "unlimited")
# The CUDA context and library handles, outside torch's allocator, on a card of the stated size.
CONTEXT_RESERVE = GIB // 2
FRAGMENTATION = 0.95  # share of the rest the caching allocator can really hand out
# cuBLAS and cuBLASLt workspaces (32 MiB each on Hopper) live inside torch's caching allocator, so they
# count against a cap like any tensor; cuDNN attention takes its workspace there per call too.
WORKSPACE = 64 * MIB
# Headroom of every phase (see the module docstring): a fixed part for segments pinned by long-lived
# tensors, sized from the H100 failures (1.4-1.7 GiB of the cap unusable; the old plans left 0.7-1.1 GiB
# beyond their estimates, counting the context reserve a per-process cap does not take), and a share of
# the phase for the allocator's 2 MiB rounding of every large tensor (~1 MiB a tensor, 1-2% of weights).
HEADROOM_FIXED = 768 * MIB
HEADROOM_SHARE = 0.05
# Transient bytes per element of one quantized matrix expanded on the fly (sizes.largest_quantized):
# eager dequantizers hold float32 temporaries (Q8_0 8, Q4_0 9, Q4_K/Q2_K 12, Q3_K 14 bytes an element
# at their peak, output included); the compiled CUDA one writes the compute-dtype weight and nothing else.
DEQUANT_EAGER_BYTES = 14
DEQUANT_COMPILED_BYTES = 4  # the bf16 output, and as much again for anything inductor did not fuse
RAM_RESERVE = 6 * GIB  # the OS, Python, torch, load-time temporaries
PIN_SHARE = 0.6  # never page-lock more than this share of RAM: the rest must stay reclaimable
VAE_TILE = 512  # pixels; 64-latent tiles with a quarter overlap
# Model patches (ControlNets): planned with the DiT, resident or streamed with it (all their blocks stream,
# through two slots of their own). 1.0 is 2.9 GB bf16, 2.0/2.1 6.7 GB, 2.1 Lite 1.9 GB: not small.
MODEL_PATCH = "model_patch"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(g|gb|gib)?$", re.IGNORECASE)


def parse_vram(text: str) -> float | None:
    """`--vram` → GiB, `None` for "auto"; "unlimited" → infinity (plan as if VRAM were unbounded)."""
    value = text.strip().lower()
    if value == "auto":
        return None
    if value in ("unlimited", "none", "unconstrained"):
        return float("inf")
    match = _SIZE.match(value)
    if not match or float(match[1]) <= 0:
        raise InputError(f"--vram must be one of {', '.join(VRAM_CHOICES)} or a size like 10G (got {text!r})")
    return float(match[1])


def usable_vram(text: str, device: torch.device) -> tuple[int | None, str]:
    """(bytes our allocations may use or None for unbounded, label) for a `--vram` setting.

    "auto" reads the free memory of a CUDA device (plus what this process already holds, so re-planning
    sees its own models as available); elsewhere "auto" means unbounded. A stated size is a card of
    that size: the CUDA context is taken off first.
    """
    gib = parse_vram(text)
    if gib == float("inf") or (gib is None and device.type != "cuda"):
        return None, "unconstrained"
    if gib is None:
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
        return int(free * FRAGMENTATION), f"auto ({free / GIB:.1f}G free)"
    return int((gib * GIB - CONTEXT_RESERVE) * FRAGMENTATION), f"{gib:g}G"


def system_ram() -> int | None:
    """Physical RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class Workload:
    """What one job computes: image size, batch, whether CFG doubles the DiT batch.

    The negative prompt also runs at cfg 1 for CFG++ samplers (`uncond_at_cfg1`).
    """

    width: int = 1024
    height: int = 1024
    batch: int = 1
    cfg: float = 1.0
    caption_tokens: int = 512  # the encoder's maximum: prompt length is unknown when planning
    uncond_at_cfg1: bool = False


@dataclass(frozen=True)
class Precision:
    """Bytes per element each component computes in, and how the DiT computes (`ZImageDiT.set_precision`:
    "plain" in its weights' dtype, "fp16" the fp16-safe path, "fp32" fp32 arithmetic over stored
    weights, one layer expanded to fp32 at a time)."""

    dit_bytes: int = 2
    text_encoder_bytes: int = 2
    vae_bytes: int = 2
    dit_compute: str = "plain"


def dit_activation_bytes(w: Workload, hidden: int, dtype_bytes: int, compute: str = "plain") -> int:
    """Peak activations of one DiT block: sequence × (~14 hidden-wide + 4 FFN-wide tensors) in the
    compute dtype. The fp16-safe path holds the hidden-wide ones (residual, norms) in fp32 and the FFN
    hidden also once in fp32 (5 FFN-wide fp16 equivalents); fp32 compute holds everything in fp32 plus
    one fused W₁‖W₃ weight expanded to fp32."""
    tokens = (w.width // 16) * (w.height // 16) + w.caption_tokens
    batch = w.batch * (1 if w.cfg == 1.0 and not w.uncond_at_cfg1 else 2)
    ffn = int(hidden / 3 * 8)
    if compute == "fp16":
        per_token = 14 * hidden * 4 + 5 * ffn * 2
    elif compute == "fp32":
        per_token = (14 * hidden + 4 * ffn) * 4
    else:
        per_token = (14 * hidden + 4 * ffn) * dtype_bytes
    expanded = 2 * ffn * hidden * 4 if compute == "fp32" else 0
    return batch * tokens * per_token + expanded + 64 * MIB


def te_activation_bytes(w: Workload, size: ComponentSize, dtype_bytes: int) -> int:
    """All hidden states are kept (`output_hidden_states`; the second-to-last is used), plus one
    layer's working set: Qwen3-4B's MLP holds up to three 9728-wide tensors at once (silu(gate), up,
    their product: 11.4 hidden-widths) beside the residual, its norm and the layer's output; 16 leaves
    room for rounding (attention needs fewer).

    No KV cache: the encoder runs with `use_cache=False` (with transformers' default `True` it would add
    2 × layers × tokens × 1024 × 2 bytes, 72 MiB at 512 tokens for Qwen3-4B).
    """
    layers = len(size.blocks) + 1
    return w.caption_tokens * size.hidden * dtype_bytes * (layers + 16) + 64 * MIB


def phase_headroom(phase_bytes: int) -> int:
    """Bytes a phase needs free beyond its estimate (module docstring: allocator rounding and segments
    pinned by long-lived tensors)."""
    return HEADROOM_FIXED + int(HEADROOM_SHARE * phase_bytes)


def vae_decode_bytes(width: int, height: int, batch: int, dtype_bytes: int) -> int:
    """Flux VAE decode: ~1200 values a pixel in the upsampling path, plus the mid-block attention's
    (latent tokens)² scores (PyTorch has no fused kernel for its 512-wide head)."""
    pixels = width * height
    return batch * dtype_bytes * (1200 * pixels + 3 * (pixels // 64) ** 2) + 64 * MIB


@dataclass(frozen=True)
class Residence:
    """One component's part of a plan: where its weights live and what that allows when running it.

    `streamed`: the weights stay in host RAM (page-locked when `pinned`) and pass through the device
    per use, except `resident_blocks` DiT blocks kept there anyway. Streamed weights change addresses
    every use, so compiled blocks and CUDA graphs (which need weights at fixed addresses) are off for
    that component: `fixed_addresses` is what the speed settings consult.
    """

    streamed: bool = False
    resident_blocks: int = 0
    pinned: bool = False

    @property
    def fixed_addresses(self) -> bool:
        return not self.streamed


@dataclass(frozen=True)
class MemoryPlan:
    """Where each component lives. `str(plan)` is the one-paragraph summary the CLI and log print."""

    name: str = "unconstrained"
    level: str = "resident"
    text_encoder: str = "resident"  # resident | streamed (layer by layer for each prompt, nothing kept)
    dit: str = "resident"  # resident | streamed
    dit_resident_blocks: int = 0  # streamed DiT: blocks kept on the GPU anyway
    vae_tiled: bool = False
    pin_dit: bool = False  # streamed DiT blocks in page-locked RAM (asynchronous copies)
    pin_text_encoder: bool = False
    budget: int | None = None  # usable bytes; None = unbounded
    peak: int = 0  # estimated peak bytes over the phases below (tensors only, no headroom)
    phases: tuple[tuple[str, int], ...] = ()  # (phase, estimated bytes of the tensors it holds)
    needs: int = 0  # the most any phase needs free: its estimate plus `phase_headroom`
    ram: int = 0  # estimated RAM held (pinned copies + baseline)
    fallback: MemoryPlan | None = None

    def residence(self, kind: str) -> Residence:
        """Where the DiT or the text encoder lives under this plan (the VAE is always resident)."""
        if kind == DIT:
            return Residence(self.dit == "streamed", self.dit_resident_blocks, self.pin_dit)
        if kind == TEXT_ENCODER:
            return Residence(self.text_encoder == "streamed", 0, self.pin_text_encoder)
        return Residence()

    @property
    def fits(self) -> bool:
        """Every phase's estimate and headroom fit the budget."""
        return self.budget is None or self.needs <= self.budget

    def __str__(self) -> str:
        pin = " from pinned RAM"
        te = "on the GPU" if self.text_encoder == "resident" else "streamed per prompt"
        if self.text_encoder == "streamed" and self.pin_text_encoder:
            te += pin
        dit = "resident"
        if self.dit == "streamed":
            dit = (
                f"streamed{pin if self.pin_dit else ' from RAM'}, {self.dit_resident_blocks} blocks resident"
            )
        budget = "unbounded" if self.budget is None else f"{self.budget / GIB:.1f} GiB usable"
        over = "" if self.fits else " — OVER BUDGET, expect out-of-memory errors"
        return (
            f"memory plan {self.name} [{self.level}]: text encoder {te}; DiT {dit}; "
            f"VAE {'tiled' if self.vae_tiled else 'full'} decode; peak ≈ {self.peak / GIB:.1f} GiB VRAM, "
            f"{self.needs / GIB:.1f} GiB with headroom ({budget}){over}; RAM ≈ {self.ram / GIB:.1f} GiB"
        )


def _peaks(
    plan: MemoryPlan,
    sizes: dict[str, ComponentSize],
    w: Workload,
    precision: Precision | int,
    dequant_bytes: int = DEQUANT_EAGER_BYTES,
) -> MemoryPlan:
    """Fill in the per-phase estimates of a plan's placements and what each needs with headroom.

    Every phase holds what is resident at that time, whichever phase uses it: the DiT (resident, or
    its kept blocks plus the two streaming slots, which stay allocated once the first step made them)
    and the VAE while the prompt is encoded, the text encoder during sampling and decoding when it is
    resident. A resident encoder on CUDA runs through CUDA graphs whose memory pool keeps its largest
    activations for good, so those count in every phase too.
    """
    if isinstance(precision, int):  # every component in these bytes, the DiT plain
        precision = Precision(precision, precision, precision)
    dit, te, vae = sizes[DIT], sizes[TEXT_ENCODER], sizes[VAE]
    if plan.dit == "resident":
        dit_bytes = dit.total
    else:
        kept = sorted(dit.blocks, reverse=True)[: plan.dit_resident_blocks]
        dit_bytes = dit.other + 2 * dit.max_block + sum(kept)
    if (patch := sizes.get(MODEL_PATCH)) is not None:
        dit_bytes += patch.total if plan.dit == "resident" else patch.other + 2 * patch.max_block
    te_activations = te_activation_bytes(w, te, precision.text_encoder_bytes)
    te_kept = te.total + te_activations if plan.text_encoder == "resident" else 0
    te_encoding = te_kept if plan.text_encoder == "resident" else te.other + 2 * te.max_block + te_activations
    expand = dequant_bytes * dit.largest_quantized  # one quantized matrix (group) expanded per call
    vae_bytes = precision.vae_bytes
    if plan.vae_tiled:
        decode = vae_decode_bytes(min(w.width, VAE_TILE), min(w.height, VAE_TILE), w.batch, vae_bytes)
        decode += w.batch * 3 * w.width * w.height * 4 * 2  # tiles and the blended image
    else:
        decode = vae_decode_bytes(w.width, w.height, w.batch, vae_bytes)
    always = dit_bytes + vae.total + WORKSPACE
    phases = (
        ("encode", always + te_encoding),
        (
            "sample",
            always
            + te_kept
            + dit_activation_bytes(w, dit.hidden, precision.dit_bytes, precision.dit_compute)
            + expand,
        ),
        ("decode", always + te_kept + decode),
    )
    needs = max(p + phase_headroom(p) for _, p in phases)
    return dataclasses.replace(plan, phases=phases, peak=max(p for _, p in phases), needs=needs)


def _with_ram(plan: MemoryPlan, sizes: dict[str, ComponentSize], ram: int | None) -> MemoryPlan:
    """Pin streamed weights while RAM allows; unpinned streaming reads the memory-mapped file."""
    ram = ram if ram is not None else 16 * GIB
    available = min(ram - RAM_RESERVE, int(ram * PIN_SHARE))
    streamed_dit = 0
    if plan.dit == "streamed":
        streamed_dit = sum(sorted(sizes[DIT].blocks)[: len(sizes[DIT].blocks) - plan.dit_resident_blocks])
        streamed_dit += sum(sizes[MODEL_PATCH].blocks) if MODEL_PATCH in sizes else 0
    pin_dit = plan.dit == "streamed" and streamed_dit <= available
    pinned = streamed_dit if pin_dit else 0
    te = sizes[TEXT_ENCODER].total
    pin_te = plan.text_encoder == "streamed" and pinned + te <= available
    pinned += te if pin_te else 0
    return dataclasses.replace(plan, pin_dit=pin_dit, pin_text_encoder=pin_te, ram=pinned + 2 * GIB)


def _ladder(sizes: dict[str, ComponentSize], budget: int | None, probe) -> list[MemoryPlan]:
    rungs = [
        MemoryPlan(level="resident"),
        MemoryPlan(level="te-streamed", text_encoder="streamed"),
        MemoryPlan(level="te-streamed+tiled-vae", text_encoder="streamed", vae_tiled=True),
    ]
    streamed = MemoryPlan(level="dit-streamed", text_encoder="streamed", dit="streamed", vae_tiled=True)
    keep = _blocks_that_fit(streamed, sizes, budget, probe)
    if keep:
        rungs.append(dataclasses.replace(streamed, dit_resident_blocks=keep))
    rungs.append(dataclasses.replace(streamed, level="dit-streamed-all"))
    return [probe(r) for r in rungs]


def _blocks_that_fit(streamed: MemoryPlan, sizes: dict[str, ComponentSize], budget: int | None, probe) -> int:
    """How many DiT blocks a streamed plan can keep resident with every phase's headroom intact."""
    blocks = sizes[DIT].blocks
    most = max(0, len(blocks) - 2)  # two stream anyway: the slots would hold them
    if budget is None or not blocks:
        return most
    keep = 0
    while keep < most and probe(dataclasses.replace(streamed, dit_resident_blocks=keep + 1)).fits:
        keep += 1
    return keep


def plan_memory(
    sizes: dict[str, ComponentSize],
    workload: Workload = Workload(),
    *,
    budget: int | None,
    name: str = "unconstrained",
    ram: int | None = None,
    dtype_bytes: int = 2,
    dequant_bytes: int = DEQUANT_EAGER_BYTES,
    precision: Precision | None = None,
) -> MemoryPlan:
    """The fastest plan that fits `budget` (usable bytes) with headroom, linked to its fallbacks.

    `dequant_bytes`: transient bytes per element of an on-the-fly expanded quantized matrix; eager's
    (the safe default) or `DEQUANT_COMPILED_BYTES` where the compiled CUDA dequantizer runs.
    `precision`: the components' dtypes (default: every component in `dtype_bytes`, the DiT plain).
    """
    precision = precision or Precision(dtype_bytes, dtype_bytes, dtype_bytes)

    def probe(plan: MemoryPlan) -> MemoryPlan:
        plan = dataclasses.replace(plan, name=name, budget=budget)
        return _with_ram(_peaks(plan, sizes, workload, precision, dequant_bytes), sizes, ram)

    ladder = _ladder(sizes, budget, probe)
    start = next((i for i, p in enumerate(ladder) if p.fits), len(ladder) - 1)
    chain = [ladder[start]]
    for plan in ladder[start + 1 :]:
        if plan.needs < chain[-1].needs:  # a fallback must actually need less memory
            chain.append(plan)
    linked: MemoryPlan | None = None
    for plan in reversed(chain):
        linked = dataclasses.replace(plan, fallback=linked)
    assert linked is not None
    return linked
