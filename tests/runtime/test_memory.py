"""The VRAM planner: budgets, file sizes and the plans chosen for them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.gguf_write import write_dit_gguf
from zturbo.checkpoints.keymaps import diffusers_dit_to_comfy
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.checkpoints.synthetic import TINY, build_random_dit
from zturbo.errors import InputError
from zturbo.runtime.memory import GIB, Workload, parse_vram, plan_memory, usable_vram
from zturbo.runtime.memory_manager import released_size
from zturbo.runtime.sizes import ComponentSize, measure

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
    ("4G", "bf16"): ("dit-streamed", None),
    ("6G", "bf16"): ("dit-streamed", None),
    ("8G", "bf16"): ("dit-streamed", None),
    ("12G", "bf16"): ("dit-streamed", None),
    ("16G", "bf16"): ("te-streamed+tiled-vae", 0),
    ("24G", "bf16"): ("te-streamed", 0),
    ("unlimited", "bf16"): ("resident", 0),
    ("4G", "q4_0"): ("dit-streamed", None),
    ("6G", "q4_0"): ("dit-streamed", None),
    ("8G", "q4_0"): ("te-streamed+tiled-vae", 0),
    ("12G", "q4_0"): ("te-streamed", 0),
    ("24G", "q4_0"): ("resident", 0),
    ("4G", "q8_0"): ("dit-streamed", None),
    ("12G", "q8_0"): ("te-streamed", 0),
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
    assert size.largest_quantized == max(
        v.numel() for v in layer.values() if v.ndim == 2 and v.shape[1] % 32 == 0
    )
