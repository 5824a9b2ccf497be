"""`QuantLinear.concatenated`: Q‖K‖V and W1‖W3 of quantized blocks as one layer, one GEMM.

What is exact and what is bounded:
- The stacked layer's weight is bit for bit the parts' weights stacked (dequantization works row by row
  on whole blocks), and its output is bit for bit `F.linear` of that stacked weight: the same GEMM.
- Its output next to the parts' outputs side by side is not exact by construction: one GEMM of N = 128
  rows against three of 64, 32 and 32, and BLAS picks its kernel (and with it the order in which each
  dot product's K terms are summed) by shape. MKL's AVX2 sgemm (AVX2-only CPUs; on Intel AVX-512 run it
  with `MKL_ENABLE_INSTRUCTIONS=AVX2`) sums N ≥ 96 differently from N ≤ 64 here. `assert_same_sums`
  bounds the difference: each side is a sum of n = K + 1 terms (K products and the bias) in some order,
  within γₙ·S of the exact sum, γₙ = n·u / (1 − n·u), u = 2⁻²⁴, S = |x|·|W|ᵀ + |b| (Higham, Accuracy and
  Stability of Numerical Algorithms, §3.1), so the two differ by at most 2·γₙ·S per element. bf16 outputs add one bf16
  rounding per side (half an ulp, 2⁻⁸ relative). Measured on that MKL path: the worst element is off
  by 1.7e-3 of its bound; the parts' outputs in the wrong order are outside the bound in 99% of elements.
"""

from __future__ import annotations

import gguf
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q
from torch import nn

from zturbo.quant.fp8 import Fp8Weight, quantize_to_fp8
from zturbo.quant.gguf import GGUFWeight
from zturbo.quant.gguf_quantize import quantize as torch_quantize
from zturbo.quant.linear import QuantLinear

IN = 512  # two K-quant super-blocks a row
OUTS = (64, 32, 32)  # q, k, v of a GQA attention


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gguf_weight(qtype: Q, out_features: int, in_features: int = IN, seed: int = 0) -> GGUFWeight:
    w = torch.randn(out_features, in_features, generator=gen(seed))
    if qtype in (Q.Q4_K, Q.Q6_K):  # the gguf package has no quantizer for these: the torch one
        raw = torch_quantize(w, qtype)
    else:
        raw = torch.from_numpy(gguf.quants.quantize(w.numpy(), qtype))
    return GGUFWeight(raw, qtype, torch.Size((out_features, in_features)))


def fp8_weight(out_features: int, per_row: bool, seed: int = 0, **kw) -> Fp8Weight:
    weight = torch.randn(out_features, IN, generator=gen(seed)) * (seed + 1)  # parts of different scales
    return quantize_to_fp8(weight, per_row=per_row, **kw)


def assert_same_sums(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, fused: QuantLinear) -> None:
    """`got` and `want` are x·Wᵀ + b summed in two orders: equal within 2·γₙ·S (see the module docstring)."""
    x64, w64 = x.to(fused.compute_dtype).double(), fused.weight.double()
    s = x64.abs() @ w64.abs().T
    if fused.bias is not None:
        s = s + fused.bias.to(fused.compute_dtype).double().abs()
    n = fused.in_features + 1
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
    bound = 2 * gamma * s
    if got.dtype == torch.bfloat16:  # each side rounded its fp32 sum once: within 2⁻⁸ of it
        bound = bound + 2.0**-8 * (got.double().abs() + want.double().abs()) / (1 - 2.0**-8)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert bool(((got.double() - want.double()).abs() <= bound).all())


KINDS = ("Q8_0", "Q4_0", "Q4_K", "Q6_K", "fp8-row", "fp8-tensor")


def parts(kind: str, dtype: torch.dtype, bias: bool = True, **kw) -> list[QuantLinear]:
    layers = []
    for i, out in enumerate(OUTS):
        if kind.startswith("fp8"):
            weight = fp8_weight(out, per_row=kind == "fp8-row", seed=i)
        else:
            weight = gguf_weight(Q[kind], out, seed=i)
        b = torch.randn(out, generator=gen(10 + i)) if bias else None
        layers.append(QuantLinear(weight, b, compute_dtype=dtype, **kw))
    return layers


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_output_equals_the_parts_outputs_side_by_side(kind: str, dtype: torch.dtype, bias: bool) -> None:
    layers = parts(kind, dtype, bias)
    before = [(p.qweight.clone(), p.qweight.data_ptr()) for p in layers]
    fused = QuantLinear.concatenated(layers)
    assert fused is not None
    assert (fused.out_features, fused.in_features) == (sum(OUTS), IN)
    stored, first = fused.quantized(), layers[0].quantized()
    assert type(stored) is type(first) and stored.label == first.label  # same GGUF type / fp8 format
    x = torch.randn(2, 7, IN, generator=gen(3))

    assert torch.equal(fused.weight, torch.cat([p.weight for p in layers]))
    b = torch.cat([p.bias for p in layers]).to(dtype) if bias else None
    out = fused(x)
    assert out.dtype == dtype and torch.equal(out, F.linear(x.to(dtype), fused.weight, b))
    assert_same_sums(out, torch.cat([p(x) for p in layers], dim=-1), x, fused)
    for p, (data, ptr) in zip(layers, before, strict=True):  # the parts are left as they were
        assert p.qweight.data_ptr() == ptr and torch.equal(p.qweight, data)


def test_a_per_tensor_scale_becomes_that_parts_rows() -> None:
    layers = parts("fp8-tensor", torch.float32)
    fused = QuantLinear.concatenated(layers)
    assert fused is not None
    scale = fused.scale.view(torch.float32)
    assert scale.shape == (sum(OUTS), 1)
    starts = [0, OUTS[0], OUTS[0] + OUTS[1]]
    for p, start, out in zip(layers, starts, OUTS, strict=True):
        assert torch.equal(scale[start : start + out], p.scale.view(torch.float32).expand(out, 1))


def test_mixed_per_row_and_per_tensor_scales_stack() -> None:
    row, tensor = parts("fp8-row", torch.float32)[0], parts("fp8-tensor", torch.float32)[1]
    fused = QuantLinear.concatenated([row, tensor])
    assert fused is not None
    x = torch.randn(4, IN, generator=gen(4))
    assert torch.equal(fused.weight, torch.cat([row.weight, tensor.weight]))
    assert_same_sums(fused(x), torch.cat([row(x), tensor(x)], dim=-1), x, fused)


def test_static_input_scales_must_agree() -> None:
    def with_input_scale(layer: QuantLinear, value: float) -> QuantLinear:
        w = Fp8Weight(layer.quantized().data, layer.scale.view(torch.float32), torch.tensor(value))
        return QuantLinear(w, layer.bias, compute_dtype=layer.compute_dtype)

    a, b, c = parts("fp8-row", torch.float32)
    same = QuantLinear.concatenated([with_input_scale(p, 0.05) for p in (a, b, c)])
    assert same is not None and torch.equal(same.input_scale.view(torch.float32), torch.tensor(0.05))
    assert QuantLinear.concatenated([with_input_scale(a, 0.05), with_input_scale(b, 0.07)]) is None
    assert QuantLinear.concatenated([with_input_scale(a, 0.05), b]) is None


def test_flat_stored_bytes_are_rows_too() -> None:
    """Stored bytes may arrive flat (one dimension): rows are still `in_features / block` blocks each."""
    weights = [gguf_weight(Q.Q8_0, out, seed=i) for i, out in enumerate(OUTS)]
    flat = [QuantLinear(GGUFWeight(w.data.reshape(-1), w.qtype, w.shape)) for w in weights]
    fused = QuantLinear.concatenated(flat)
    assert fused is not None
    assert torch.equal(fused.weight, torch.cat([p.weight for p in flat]))


def test_a_single_part_is_its_own_concatenation() -> None:
    layer = parts("Q4_K", torch.float32)[0]
    fused = QuantLinear.concatenated([layer])
    x = torch.randn(3, IN, generator=gen(5))
    assert fused is not None and torch.equal(fused(x), layer(x))


def _incompatible() -> dict[str, list[nn.Module]]:
    f32, bf16 = torch.float32, torch.bfloat16
    q8 = parts("Q8_0", f32)
    e4m3 = parts("fp8-row", f32)
    e5m2 = QuantLinear(fp8_weight(32, per_row=True, dtype=torch.float8_e5m2), compute_dtype=f32)
    full_precision = Fp8Weight(e4m3[1].qweight.view(torch.float8_e4m3fn), e4m3[1].scale.view(torch.float32))
    full_precision = Fp8Weight(full_precision.data, full_precision.scale, full_precision_mm=True)
    odd_rows = QuantLinear(GGUFWeight(torch.zeros(3 * 34, dtype=torch.uint8), Q.Q8_0, torch.Size((2, 48))))
    return {
        "qtype": [q8[0], parts("Q4_0", f32)[1]],
        "gguf and fp8": [q8[0], e4m3[1]],
        "fp8 format": [e4m3[0], e5m2],
        "compute dtype": [q8[0], parts("Q8_0", bf16)[1]],
        "in_features": [q8[0], QuantLinear(gguf_weight(Q.Q8_0, 32, in_features=256), compute_dtype=f32)],
        "scaled mm": [e4m3[0], parts("fp8-row", f32, use_scaled_mm=True)[1]],
        "full precision mm": [e4m3[0], QuantLinear(full_precision, compute_dtype=f32)],
        "bias on some only": [q8[0], parts("Q8_0", f32, bias=False)[1]],
        "bias dtype": [q8[0], QuantLinear(gguf_weight(Q.Q8_0, 32), torch.zeros(32, dtype=bf16))],
        "blocks straddle rows": [odd_rows, odd_rows],
        "not quantized": [q8[0], nn.Linear(IN, 32)],
    }


@pytest.mark.parametrize("case", list(_incompatible()))
def test_parts_that_cannot_stack_give_none(case: str) -> None:
    assert QuantLinear.concatenated(_incompatible()[case]) is None  # type: ignore[arg-type]


def test_no_parts_give_none() -> None:
    assert QuantLinear.concatenated([]) is None
