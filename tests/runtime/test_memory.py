"""The VRAM planner: budgets, file sizes and the plans chosen for them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.keymaps import diffusers_dit_to_comfy
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.errors import InputError
from zturbo.runtime import memory
from zturbo.runtime.memory import (
    DEQUANT_COMPILED_BYTES,
    DEQUANT_EAGER_BYTES,
    GIB,
    WORKSPACE,
    MemoryPlan,
    Workload,
    parse_vram,
    phase_headroom,
    plan_memory,
    te_activation_bytes,
    usable_vram,
)
from zturbo.runtime.memory_manager import released_size
from zturbo.runtime.sizes import ComponentSize, measure
from zturbo.testing.gguf_write import write_dit_gguf
from zturbo.testing.synthetic import TINY, build_random_dit

CUDA = torch.device("cuda")


def quantized(size: ComponentSize, bits_per_weight: float) -> ComponentSize:
    """The released DiT with its 30 main blocks quantized (refiners stay bf16, as in GGUF files)."""
    blocks = size.blocks[:4] + tuple(int(b / 2 * bits_per_weight / 8) for b in size.blocks[4:])
    return ComponentSize(blocks, size.other, 3 * 3840 * 3840, size.hidden)


BF16 = {kind: released_size(kind, 2) for kind in (DIT, TEXT_ENCODER, VAE)}
WEIGHTS = {"bf16": BF16[DIT], "q8_0": quantized(BF16[DIT], 8.5), "q4_0": quantized(BF16[DIT], 4.5)}


def plan_for(vram: str, weights: str, ram: int = 64 * GIB, workload: Workload | None = None):
    budget, name = usable_vram(vram, CUDA)
    sizes = {**BF16, DIT: WEIGHTS[weights]}
    return plan_memory(sizes, workload or Workload(), budget=budget, name=name, ram=ram)


# (vram, weights) -> (level, DiT resident blocks or None for "any")
TABLE = {
    ("4G", "bf16"): ("dit-streamed-all", 0),
    ("6G", "bf16"): ("dit-streamed", None),
    ("8G", "bf16"): ("dit-streamed", None),
    ("12G", "bf16"): ("dit-streamed", None),
    ("16G", "bf16"): ("te-streamed+tiled-vae", 0),
    ("24G", "bf16"): ("te-streamed", 0),
    ("unlimited", "bf16"): ("resident", 0),
    ("4G", "q4_0"): ("dit-streamed-all", 0),
    ("6G", "q4_0"): ("dit-streamed", None),
    ("8G", "q4_0"): ("te-streamed+tiled-vae", 0),
    ("12G", "q4_0"): ("te-streamed", 0),
    ("24G", "q4_0"): ("resident", 0),
    ("4G", "q8_0"): ("dit-streamed-all", 0),
    ("12G", "q8_0"): ("te-streamed+tiled-vae", 0),
}


@pytest.mark.parametrize(("vram", "weights"), list(TABLE), ids=lambda v: str(v))
def test_plan_table(vram: str, weights: str) -> None:
    level, blocks = TABLE[(vram, weights)]
    plan = plan_for(vram, weights)
    assert plan.level == level, str(plan)
    assert blocks is None or plan.dit_resident_blocks == blocks
    assert plan.fits and plan.peak <= plan.budget if plan.budget else True
    assert plan.name == ("unconstrained" if vram == "unlimited" else vram)


def test_the_4g_plan_streams_and_fits_in_4_gib() -> None:
    for weights in WEIGHTS:
        plan = plan_for("4G", weights)
        assert plan.text_encoder == "streamed" and plan.dit == "streamed" and plan.vae_tiled
        assert plan.peak <= 4 * GIB - GIB // 2  # the CUDA context gets the rest
        assert dict(plan.phases).keys() == {"encode", "sample", "decode"}


def test_more_vram_never_gives_a_slower_rung() -> None:
    order = ["dit-streamed-all", "dit-streamed", "te-streamed+tiled-vae", "te-streamed", "resident"]
    for weights in WEIGHTS:
        ranks = []
        for vram in ("4G", "6G", "8G", "12G", "16G", "24G", "48G"):
            plan = plan_for(vram, weights)
            ranks.append((order.index(plan.level), plan.dit_resident_blocks))
        assert ranks == sorted(ranks), weights


def test_fallbacks_need_strictly_less_memory() -> None:
    plan = plan_for("unlimited", "bf16")
    chain = []
    while plan is not None:
        chain.append(plan)
        plan = plan.fallback
    assert [p.level for p in chain][0] == "resident" and chain[-1].level == "dit-streamed-all"
    assert all(a.peak > b.peak for a, b in zip(chain, chain[1:], strict=False))


def test_bigger_images_and_batches_need_lower_plans() -> None:
    small = plan_for("24G", "bf16", workload=Workload(512, 512))
    large = plan_for("24G", "bf16", workload=Workload(2048, 2048, batch=2, cfg=4.0))
    assert small.level in ("resident", "te-streamed") and large.level != small.level
    assert large.vae_tiled


def test_pinning_follows_ram() -> None:
    roomy = plan_for("6G", "bf16", ram=128 * GIB)
    assert roomy.pin_dit and roomy.pin_text_encoder
    small = plan_for("6G", "bf16", ram=24 * GIB)  # DiT pinned (11 GB), the encoder read from its file
    assert small.pin_dit and not small.pin_text_encoder and small.ram < 20 * GIB
    tiny = plan_for("6G", "bf16", ram=8 * GIB)
    assert not tiny.pin_dit and not tiny.pin_text_encoder


def test_plan_text_says_what_goes_where() -> None:
    text = str(plan_for("8G", "q4_0"))
    assert text.startswith("memory plan 8G [te-streamed+tiled-vae]: text encoder streamed per prompt")
    assert "DiT resident" in text and "VAE tiled decode" in text and "GiB usable" in text
    assert "streamed from pinned RAM, " in str(plan_for("4G", "bf16", ram=128 * GIB))
    over = plan_memory({**BF16}, budget=GIB // 4, name="1G")
    assert not over.fits and "OVER BUDGET" in str(over)


@pytest.mark.parametrize(
    ("text", "gib"),
    [("auto", None), ("4G", 4.0), ("12gb", 12.0), ("6", 6.0), ("10.5G", 10.5), ("unlimited", float("inf"))],
)
def test_parse_vram(text: str, gib: float | None) -> None:
    assert parse_vram(text) == gib


@pytest.mark.parametrize("text", ["", "-4G", "4T", "lots", "0G"])
def test_parse_vram_rejects_nonsense(text: str) -> None:
    with pytest.raises(InputError, match="4G, 6G, 8G"):
        parse_vram(text)


def test_usable_vram() -> None:
    assert usable_vram("auto", torch.device("cpu")) == (None, "unconstrained")
    budget, name = usable_vram("8G", CUDA)
    assert name == "8G" and 7 * GIB < budget < 7.5 * GIB


def test_auto_reads_free_cuda_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * GIB)
    budget, name = usable_vram("auto", CUDA)
    assert name == "auto (12.0G free)" and budget == int(12 * GIB * 0.95)


def test_measure_bf16_file_in_blocks(tiny_models: Path) -> None:
    size = measure(tiny_models / COMFY_FILES[DIT], DIT, dtype=torch.bfloat16)
    model, sd = build_random_dit(TINY.dit)
    assert size.total == sum(v.numel() for v in sd.values()) * 2
    assert len(size.blocks) == 2 + 2 + 2 and size.hidden == 64 and not size.quantized
    as_fp32 = measure(tiny_models / COMFY_FILES[DIT], DIT, dtype=torch.float32)
    assert as_fp32.total == 2 * size.total
    fp8 = measure(tiny_models / COMFY_FILES[DIT], DIT, dtype=torch.bfloat16, weight_dtype="fp8")
    assert fp8.blocks[:4] == size.blocks[:4] and fp8.blocks[4] < size.blocks[4] * 0.6 and fp8.quantized
    te = measure(tiny_models / COMFY_FILES[TEXT_ENCODER], TEXT_ENCODER, dtype=torch.bfloat16)
    assert len(te.blocks) == 3 and te.hidden == 32


def test_measure_gguf_counts_stored_blocks(tmp_path: Path) -> None:
    _, sd = build_random_dit(TINY.dit)
    comfy = diffusers_dit_to_comfy(sd)
    path = write_dit_gguf(tmp_path / "d.gguf", comfy, Q.Q8_0)
    size = measure(path, DIT, dtype=torch.bfloat16)
    block_size, type_size = GGML_QUANT_SIZES[Q.Q8_0]
    layer = {k: v for k, v in comfy.items() if k.startswith("layers.1.")}
    quantized = sum(
        v.numel() // block_size * type_size for v in layer.values() if v.ndim == 2 and v.shape[1] % 32 == 0
    )
    plain = sum(v.numel() * 2 for v in layer.values() if v.ndim == 1 or v.shape[1] % 32)
    assert size.blocks[-1] == quantized + plain
    single = max(v.numel() for v in layer.values() if v.ndim == 2 and v.shape[1] % 32 == 0)
    w13 = sum(layer[f"layers.1.feed_forward.{w}.weight"].numel() for w in ("w1", "w3"))
    # W1‖W3 (and Q‖K‖V) of a quantized block are expanded together once fused: the planner sizes that.
    assert size.largest_quantized == max(single, w13) == w13


# ---------------------------------------------------------------- headroom (H100 encode OOMs, 2026-11-25)

SMALL_CARDS = ("4G", "6G", "8G", "12G")


@pytest.mark.parametrize("weights", list(WEIGHTS))
@pytest.mark.parametrize("vram", SMALL_CARDS)
def test_every_phase_fits_with_its_headroom(vram: str, weights: str) -> None:
    """The chosen rung leaves every phase its headroom, for the released model's real sizes."""
    plan = plan_for(vram, weights)
    assert plan.budget is not None and plan.fits, str(plan)
    for phase, estimate in plan.phases:
        assert estimate + phase_headroom(estimate) <= plan.budget, f"{vram} {weights}: {phase}"
    assert plan.needs == max(b + phase_headroom(b) for _, b in plan.phases)
    assert plan.peak == max(b for _, b in plan.phases)


@pytest.mark.parametrize("weights", list(WEIGHTS))
@pytest.mark.parametrize("vram", SMALL_CARDS)
def test_streamed_plans_keep_as_many_blocks_as_fit_and_no_more(vram: str, weights: str) -> None:
    plan = plan_for(vram, weights)
    if plan.dit != "streamed":
        return
    sizes = {**BF16, DIT: WEIGHTS[weights]}
    bigger = _peaks(dataclasses.replace(plan, dit_resident_blocks=plan.dit_resident_blocks + 1), sizes)
    assert not bigger.fits


def _peaks(plan: MemoryPlan, sizes: dict[str, ComponentSize]) -> MemoryPlan:
    """`plan` re-estimated as it stands (e.g. with another number of resident blocks), bf16, 1024²."""
    return memory._peaks(plan, sizes, Workload(), 2)


def test_the_12g_encode_estimate_holds_everything_resident_at_that_time() -> None:
    """Regression: bf16 at 12G planned 26 resident DiT blocks, an encode estimate of 10.90 GiB against
    10.93 usable, and ran out of memory encoding the prompt on the H100 (per-process cap 12 GiB, 10.41
    GiB allocated). While the prompt is encoded the GPU holds the streamed DiT's kept blocks and its two
    slots, the VAE, the text encoder's embedding, two streamed layers and its activations, and cuBLAS's
    workspaces; the plan must leave headroom beyond all of that."""
    plan = plan_for("12G", "bf16")
    dit, te, vae = BF16[DIT], BF16[TEXT_ENCODER], BF16[VAE]
    assert (plan.dit, plan.text_encoder) == ("streamed", "streamed")
    kept = sorted(dit.blocks, reverse=True)[: plan.dit_resident_blocks]
    dit_on_gpu = dit.other + sum(kept) + 2 * dit.max_block
    te_on_gpu = te.other + 2 * te.max_block + te_activation_bytes(Workload(), te, 2)
    encode = dict(plan.phases)["encode"]
    assert encode == dit_on_gpu + vae.total + te_on_gpu + WORKSPACE
    assert encode + phase_headroom(encode) <= plan.budget
    # The arithmetic, in GiB: blocks 0.337 each, DiT rest 0.022, VAE 0.156, embedding 0.724,
    # two encoder layers 0.376, encoder activations at 512 tokens 0.192, workspaces 0.0625.
    assert te.other / GIB == pytest.approx(0.7245, abs=1e-3)
    assert 2 * te.max_block / GIB == pytest.approx(0.376, abs=1e-3)
    assert te_activation_bytes(Workload(), te, 2) / GIB == pytest.approx(0.192, abs=1e-3)
    # The rung that failed on the H100 does not fit any more, and nothing near it does.
    failed = _peaks(dataclasses.replace(plan, dit_resident_blocks=26), BF16)
    assert dict(failed.phases)["encode"] / GIB == pytest.approx(10.97, abs=0.01)
    assert not failed.fits
    assert plan.dit_resident_blocks == 22


def test_old_plans_that_failed_on_the_h100_no_longer_fit() -> None:
    """bf16 rungs that ran out of memory while encoding (12G: 26 blocks, 6G: 9, 4G: 3) are refused;
    the ones that passed with room (8G: 14 blocks) are only trimmed, not abandoned."""
    for vram, failed_blocks in (("12G", 26), ("6G", 9), ("4G", 3)):
        plan = plan_for(vram, "bf16")
        assert plan.dit_resident_blocks < failed_blocks, vram
        failed = _peaks(
            dataclasses.replace(plan, level="dit-streamed", dit_resident_blocks=failed_blocks), BF16
        )
        assert not failed.fits, vram
    assert 0 < plan_for("8G", "bf16").dit_resident_blocks < 14


def test_a_resident_text_encoder_counts_in_every_phase() -> None:
    """Resident, it is on the GPU all the time, and its CUDA graphs' pool keeps the activations."""
    resident = plan_memory(BF16, budget=None)
    te = BF16[TEXT_ENCODER]
    held = te.total + te_activation_bytes(Workload(), te, 2)
    streamed = resident.fallback
    assert resident.level == "resident" and streamed.level == "te-streamed"
    for (phase, with_te), (_, without) in zip(resident.phases, streamed.phases, strict=True):
        if phase != "encode":
            assert with_te - without == held, phase


def test_compiled_dequantization_needs_less_room_while_sampling() -> None:
    sizes = {**BF16, DIT: WEIGHTS["q4_0"]}
    eager = plan_memory(sizes, budget=None, dequant_bytes=DEQUANT_EAGER_BYTES)
    compiled = plan_memory(sizes, budget=None, dequant_bytes=DEQUANT_COMPILED_BYTES)
    saved = (DEQUANT_EAGER_BYTES - DEQUANT_COMPILED_BYTES) * sizes[DIT].largest_quantized
    assert dict(eager.phases)["sample"] - dict(compiled.phases)["sample"] == saved
    assert dict(eager.phases)["encode"] == dict(compiled.phases)["encode"]


def test_the_plan_text_names_the_headroom() -> None:
    text = str(plan_for("12G", "bf16"))
    assert "GiB with headroom" in text and "22 blocks resident" in text
