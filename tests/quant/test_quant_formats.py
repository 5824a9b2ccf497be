"""int8 (+ convrot), nvfp4 and mxfp8 weights against independent numpy expansions of their definitions.

Tolerances:
- int8, nvfp4, mxfp8: none (`torch.equal`). The references (numpy, in `zturbo.testing.synthetic_quant`,
  sharing no code with `zturbo.quant` or the reader; the golden tests here are by hand) do the same
  IEEE float32 operations in the same order (int8: `q · scale`; nvfp4: `value · (scale₂ · block)`, then `· pre_scale`; mxfp8: a power of
  two times an fp8 value, exact), so the results are bit-identical on any CPU.
- int8 convrot: none either, by a derivation rather than the same operations: the reference rotates in
  float64 with a matrix product, zturbo with exact integer butterflies. `Σ q·h` is an integer below 2¹⁵,
  `scale / √g` an exact float32 (√g is a power of two), so their product is exact in float64 (< 53 bits);
  rounding it to float32 gives the correctly rounded value, which is what zturbo's single float32
  multiply of the same two exact operands gives too.
- Round trips (quantized from random weights): int8 within half a step per row (rotation is orthogonal,
  so the bound holds in the rotated basis: ‖Δrow‖₂ ≤ √in · scale / 2); these only check the writers.
- int8's `native_linear` (activations quantized per row): |Δy| ≤ ½ · x_scale · Σₖ|W_stored[n, k]| + 1e-5·|y|
  against the dequantized matmul, the activation rounding's worst case (float32 rounding the 1e-5).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zturbo.checkpoints.fp8 import untile_block_scales
from zturbo.quant import linear as quant
from zturbo.quant.int8 import Int8Weight
from zturbo.quant.linear import QuantLinear
from zturbo.quant.mxfp8 import MXFP8Weight
from zturbo.quant.nvfp4 import NVFP4Weight
from zturbo.testing.synthetic_quant import (
    comfy_quant_layer,
    int8_reference,
    mxfp8_reference,
    nvfp4_reference,
    regular_hadamard,
    tile_block_scales,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- zturbo's weights from a layer's tensors


def as_weight(fmt: str, t: dict[str, torch.Tensor], group: int = 0):
    if fmt.startswith("int8"):
        return Int8Weight(t["weight"], t["weight_scale"], group)
    rows = t["weight"].shape[0]
    if fmt == "mxfp8":
        cols = t["weight"].shape[1]
        return MXFP8Weight(
            t["weight"], untile_block_scales(t["weight_scale"].view(torch.uint8), rows, cols // 32)
        )
    cols = t["weight"].shape[1] * 2
    blocks = untile_block_scales(t["weight_scale"], rows, cols // 16)
    return NVFP4Weight(t["weight"], blocks, t["weight_scale_2"], t.get("pre_quant_scale"))


CASES = {  # format, group size, reference
    "int8": ("int8_tensorwise", 0, int8_reference),
    "int8_convrot256": ("int8_convrot", 256, lambda t: int8_reference(t, 256)),
    "int8_convrot16": ("int8_convrot", 16, lambda t: int8_reference(t, 16)),
    "nvfp4": ("nvfp4", 0, nvfp4_reference),
    "nvfp4_prescaled": ("nvfp4_prescaled", 0, nvfp4_reference),
    "mxfp8": ("mxfp8", 0, mxfp8_reference),
}


def layer_tensors(case: str, rows: int = 96, cols: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    fmt, group, _ = CASES[case]
    w = torch.randn(rows, cols, generator=gen(seed)) * torch.logspace(-2, 0, rows).unsqueeze(1)
    return comfy_quant_layer(w, fmt, convrot_groupsize=group or 256)


@pytest.mark.parametrize("case", list(CASES))
def test_expansion_equals_the_independent_reference(case: str) -> None:
    fmt, group, reference = CASES[case]
    t = layer_tensors(case)
    weight = as_weight(fmt, t, group)
    expected = torch.from_numpy(reference(t))
    assert torch.equal(weight.expand(torch.float32), expected)
    assert torch.equal(weight.expand(torch.bfloat16), expected.to(torch.bfloat16))


@pytest.mark.parametrize("group", [16, 256])
def test_int8_writers_round_trip_within_half_a_step(group: int) -> None:
    w = torch.randn(64, 512, generator=gen(3))
    for fmt in ("int8_tensorwise", "int8_convrot"):
        t = comfy_quant_layer(w, fmt, convrot_groupsize=group)
        got = as_weight(fmt, t, group if fmt == "int8_convrot" else 0).expand(torch.float32)
        scale = t["weight_scale"].float().reshape(-1, 1).expand(64, 1)
        bound = (512**0.5) * scale[:, 0] / 2 * 1.0001
        assert bool(((got - w).norm(dim=1) <= bound).all()), fmt


def test_golden_nvfp4_bytes() -> None:
    """Hand-made bytes, read with ComfyUI's conventions: element 2i in the high nibble, codes 0-15 are
    ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, row r's block scale at (r % 32)·16 + (r // 32)·4 of the first tile."""
    data = torch.zeros(40, 8, dtype=torch.uint8)
    data[1] = torch.tensor([0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF], dtype=torch.uint8)
    data[33] = 0x7F  # 6, -6, 6, -6, ...
    tiled = torch.zeros(128, 4, dtype=torch.float8_e4m3fn)
    flat = tiled.view(-1)
    flat[1 * 16] = 2.0  # row 1
    flat[(33 % 32) * 16 + (33 // 32) * 4] = 0.25  # row 33
    weight = NVFP4Weight(data, untile_block_scales(tiled, 40, 1), torch.tensor(0.5))
    got = weight.expand(torch.float32)
    assert got[1].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert got[33].tolist() == [0.75, -0.75] * 8
    assert torch.equal(got[0], torch.zeros(16)) and not got[[0, *range(2, 33), *range(34, 40)]].any()


def test_golden_mxfp8_exponents() -> None:
    data = torch.full((2, 64), 1.5).to(torch.float8_e4m3fn)
    grid = np.array([[127, 130], [120, 0]], dtype=np.uint8)  # 2^0, 2^3, 2^-7, and byte 0 reads as 0
    weight = MXFP8Weight(data, untile_block_scales(torch.from_numpy(tile_block_scales(grid)), 2, 2))
    got = weight.expand(torch.float32)
    assert got[0, :32].unique().tolist() == [1.5] and got[0, 32:].unique().tolist() == [12.0]
    assert got[1, :32].unique().tolist() == [1.5 / 128] and got[1, 32:].unique().tolist() == [0.0]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quant_linear_equals_linear_on_the_reference(case: str, dtype: torch.dtype) -> None:
    fmt, group, reference = CASES[case]
    t = layer_tensors(case, rows=48, cols=256)
    bias = torch.randn(48, generator=gen(4))
    layer = QuantLinear(as_weight(fmt, t, group), bias, compute_dtype=dtype)
    x = torch.randn(2, 5, 256, generator=gen(5))
    expected = F.linear(x.to(dtype), torch.from_numpy(reference(t)).to(dtype), bias.to(dtype))
    assert torch.equal(layer(x), expected)
    assert not layer._native_mm_applies(x.to(dtype))  # CPU: dequantize-then-matmul
    layer.to(torch.bfloat16)  # the stored form survives a dtype cast of the module
    assert torch.equal(layer.weight, torch.from_numpy(reference(t)).to(dtype))


@pytest.mark.parametrize("case", list(CASES))
def test_rows_chunk_and_stack(case: str) -> None:
    fmt, group, reference = CASES[case]
    parts = [as_weight(fmt, layer_tensors(case, rows=32, cols=256, seed=i), group) for i in range(3)]
    stacked = type(parts[0]).stack(parts)
    assert stacked is not None and stacked.shape == (96, 256)
    expected = torch.cat([p.expand(torch.float32) for p in parts])
    assert torch.equal(stacked.expand(torch.float32), expected)
    for i, piece in enumerate(stacked.chunk(3)):
        assert torch.equal(piece.expand(torch.float32), expected[32 * i : 32 * (i + 1)])
    assert torch.equal(stacked.rows(5, 40).expand(torch.float32), expected[5:40])
    layers = [QuantLinear(p, compute_dtype=torch.float32) for p in parts]
    fused = QuantLinear.concatenated(layers)
    x = torch.randn(3, 256, generator=gen(6))
    assert fused is not None and torch.equal(fused(x), torch.cat([layer(x) for layer in layers], -1))


def test_what_does_not_stack() -> None:
    int8 = as_weight("int8_tensorwise", layer_tensors("int8", rows=32, cols=256))
    rot = as_weight("int8_convrot", layer_tensors("int8_convrot16", rows=32, cols=256), 16)
    rot256 = as_weight("int8_convrot", layer_tensors("int8_convrot256", rows=32, cols=256), 256)
    pre = as_weight("nvfp4_prescaled", layer_tensors("nvfp4_prescaled", rows=32, cols=256))
    other_pre = NVFP4Weight(pre.data, pre.block_scale, pre.scale, pre.pre_quant_scale * 2)
    plain = NVFP4Weight(pre.data, pre.block_scale, pre.scale)
    assert Int8Weight.stack([int8, rot]) is None and Int8Weight.stack([rot, rot256]) is None
    assert NVFP4Weight.stack([pre, other_pre]) is None and NVFP4Weight.stack([pre, plain]) is None
    assert NVFP4Weight.stack([pre, pre]) is not None


@pytest.mark.parametrize("case", list(CASES))
def test_forward_traces_fullgraph(case: str) -> None:
    fmt, group, _ = CASES[case]
    layer = QuantLinear(
        as_weight(fmt, layer_tensors(case, rows=32, cols=256), group), compute_dtype=torch.float32
    )
    x = torch.randn(4, 256, generator=gen(7))
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), layer(x))


def test_each_format_gets_its_own_compiled_dequantizer(monkeypatch) -> None:
    compiled: list[str] = []

    def spy(fn):
        compiled.append(fn.__name__)
        return fn

    quant.reset_dequantizers()
    monkeypatch.setattr(quant, "_compile", spy)
    monkeypatch.setattr(quant, "_wants_compiled", lambda device: True)
    try:
        for case in CASES:
            fmt, group, reference = CASES[case]
            t = layer_tensors(case, rows=32, cols=256)
            layer = QuantLinear(as_weight(fmt, t, group), compute_dtype=torch.float32)
            assert torch.equal(layer.weight, torch.from_numpy(reference(t)))
    finally:
        quant.reset_dequantizers()
    names = ["dequantize_int8", "dequantize_int8_convrot", "dequantize_nvfp4", "dequantize_mxfp8"]
    assert sorted(compiled) == sorted(names)


@pytest.mark.parametrize("group", [0, 16])
def test_int8_native_matmul_math_on_cpu(group: int) -> None:
    """`native_linear` runs only on CUDA (opt-in); its arithmetic, with CPU's `torch._int_mm`, is within
    the activation rounding of the dequantized matmul (bound in the module docstring)."""
    case = "int8_convrot16" if group else "int8"
    weight = as_weight(CASES[case][0], layer_tensors(case, rows=64, cols=256), group)
    x, bias = torch.randn(3, 20, 256, generator=gen(8)), torch.randn(64, generator=gen(9))
    got = weight.native_linear(x, bias)
    want = F.linear(x, weight.expand(torch.float32), bias)
    x2 = x.reshape(-1, 256)
    if group:
        x2 = torch.from_numpy(
            (x2.double().numpy().reshape(60, -1, 16) @ regular_hadamard(16) / 4).reshape(60, 256)
        )
    x_scale = x2.abs().amax(dim=1, keepdim=True).float() / 127
    stored = (weight.data.float() * weight.scale).abs().sum(dim=1)
    bound = 0.5 * x_scale * stored.reshape(1, -1) + 1e-5 * want.reshape(60, 64).abs()
    assert got.shape == want.shape and bool(((got - want).reshape(60, 64).abs() <= bound).all())


def test_the_loader_says_how_each_format_computes(caplog) -> None:
    """One log line per format at load: nvfp4 and mxfp8 always dequantize (their matmuls need Blackwell)."""
    from torch import nn

    from zturbo.quant.linear import load_state_dict_with_quant

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(256, 32), nn.Linear(32, 32), nn.Linear(256, 32), nn.Linear(32, 256))
    state = {
        "0.weight": as_weight("nvfp4", layer_tensors("nvfp4", rows=32, cols=256)),
        "1.weight": as_weight("mxfp8", layer_tensors("mxfp8", rows=32, cols=32)),
        "2.weight": as_weight("int8_tensorwise", layer_tensors("int8", rows=32, cols=256)),
        "3.weight": torch.zeros(256, 32),
    }
    state |= {f"{i}.bias": torch.zeros(out) for i, out in enumerate((32, 32, 32, 256))}
    with caplog.at_level(logging.INFO, logger=quant.__name__):
        load_state_dict_with_quant(model, state, compute_dtype=torch.float32, source="tiny.safetensors")
    lines = [r.getMessage() for r in caplog.records]
    assert any("nvfp4: dequantized" in line and "Blackwell" in line and "1 layer" in line for line in lines)
    assert any("mxfp8: dequantized" in line and "Blackwell" in line for line in lines)
    assert any(line.startswith("int8: dequantized") for line in lines) and len(lines) == 3


# ---------------------------------------------------------------- CUDA (unverified until run on a GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["int8", "int8_convrot256"])
def test_int8_native_matmul_on_cuda(case: str) -> None:
    """`torch._int_mm` path (opt-in): applies on sm_80+ for 17+ rows, within the activation rounding."""
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("int8 tensor-core matmul wanted from sm_80")
    fmt, group, _ = CASES[case]
    weight = as_weight(fmt, layer_tensors(case, rows=256, cols=512), group)
    bias = torch.randn(256, generator=gen(10))
    fast = QuantLinear(weight, bias, compute_dtype=torch.float32, use_scaled_mm=True).cuda()
    exact = QuantLinear(weight, bias, compute_dtype=torch.float32).cuda()
    x = torch.randn(3, 40, 512, generator=gen(11)).cuda()
    assert fast._native_mm_applies(x) and not fast._native_mm_applies(x[:1, :16])
    got, want = fast(x), exact(x)
    x2 = x.reshape(-1, 512).cpu().double()
    if group:
        x2 = torch.from_numpy(
            (x2.numpy().reshape(120, -1, group) @ regular_hadamard(group) / group**0.5).reshape(120, 512)
        )
    x_scale = x2.abs().amax(dim=1, keepdim=True).float() / 127
    stored = (weight.data.float() * weight.scale).abs().sum(dim=1)
    bound = 0.5 * x_scale * stored.reshape(1, -1) + 1e-4 * want.reshape(120, 256).abs().cpu() + 1e-5
    assert bool(((got - want).reshape(120, 256).abs().cpu() <= bound).all())
    compiled = torch.compile(fast, dynamic=False, fullgraph=True)
    torch.testing.assert_close(compiled(x), got, rtol=1e-4, atol=1e-4)
