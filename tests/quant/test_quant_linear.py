"""QuantLinear and quantize_to_fp8."""

from __future__ import annotations

import gguf
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q

from zturbo.quant.fp8 import Fp8Weight, quantize_to_fp8
from zturbo.quant.gguf import GGUFWeight
from zturbo.quant.linear import QuantLinear


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gguf_weight(qtype: Q, out_features: int, in_features: int, seed: int = 0) -> GGUFWeight:
    w = torch.randn(out_features, in_features, generator=gen(seed)).numpy()
    raw = torch.from_numpy(gguf.quants.quantize(w, qtype))
    return GGUFWeight(raw, qtype, torch.Size((out_features, in_features)))


def fp8_weight(out_features: int, in_features: int, per_row: bool) -> Fp8Weight:
    return quantize_to_fp8(torch.randn(out_features, in_features, generator=gen(1)), per_row=per_row)


WEIGHTS = {
    "Q8_0": lambda: gguf_weight(Q.Q8_0, 48, 64),
    "Q5_1": lambda: gguf_weight(Q.Q5_1, 48, 64),
    "Q4_0": lambda: gguf_weight(Q.Q4_0, 48, 64),
    "fp8-row": lambda: fp8_weight(48, 64, per_row=True),
    "fp8-tensor": lambda: fp8_weight(48, 64, per_row=False),
}


@pytest.mark.parametrize("kind", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_output_equals_linear_on_dequantized_weight(kind: str, dtype: torch.dtype) -> None:
    weight, bias = WEIGHTS[kind](), torch.randn(48, generator=gen(2))
    layer = QuantLinear(weight, bias, compute_dtype=dtype)
    x = torch.randn(2, 5, 64, generator=gen(3))

    expected = F.linear(x.to(dtype), weight.dequantize(dtype), bias.to(dtype))
    out = layer(x)
    assert out.dtype == dtype and torch.equal(out, expected)
    assert layer.weight.dtype == dtype and layer.weight.shape == (48, 64)


def test_without_bias_and_repr() -> None:
    layer = QuantLinear(gguf_weight(Q.Q8_0, 16, 32), compute_dtype=torch.float32)
    x = torch.randn(3, 32, generator=gen(4))
    assert torch.equal(layer(x), x @ layer.weight.T)
    assert "Q8_0" in repr(layer) and "in_features=32" in repr(layer)


def test_module_dtype_casts_leave_quantized_storage_alone() -> None:
    """`model.to(torch.bfloat16)` must not inflate fp8 bytes or round the fp32 scales."""
    weight = fp8_weight(16, 32, per_row=True)
    layer = QuantLinear(weight, torch.randn(16), compute_dtype=torch.float32)
    before = layer.weight.clone()
    layer.to(torch.bfloat16)
    assert layer.qweight.dtype == torch.uint8 and torch.equal(layer.weight, before)
    assert layer.bias.dtype == torch.bfloat16


def test_quantized_bytes_are_buffers_but_not_state() -> None:
    layer = QuantLinear(gguf_weight(Q.Q8_0, 16, 32), torch.zeros(16), compute_dtype=torch.float32)
    assert {name for name, _ in layer.named_buffers()} == {"qweight", "bias"}
    assert layer.state_dict() == {}


@pytest.mark.parametrize("per_row", [True, False])
def test_quantize_to_fp8_is_within_fp8_rounding(per_row: bool) -> None:
    w = torch.randn(32, 64, generator=gen(5)) * torch.logspace(-3, 1, 32).unsqueeze(1)
    q = quantize_to_fp8(w.to(torch.bfloat16), per_row=per_row)
    assert q.data.dtype == torch.float8_e4m3fn
    assert q.scale.shape == ((32, 1) if per_row else ())
    got = q.dequantize(torch.float32)
    w = w.to(torch.bfloat16).float()
    bound = 2.0**-4 * w.abs() + 2.0**-9 * q.scale  # half an e4m3 step; subnormal step in scale units
    assert bool(((got - w).abs() <= bound * 1.0001).all())


def test_forward_compiles_without_graph_breaks() -> None:
    layer = QuantLinear(gguf_weight(Q.Q4_0, 16, 64), torch.randn(16), compute_dtype=torch.float32)
    x = torch.randn(4, 64, generator=gen(6))
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), layer(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("input_scale", [None, 0.05])
def test_scaled_mm_matches_dequantized_matmul_on_cuda(input_scale: float | None) -> None:
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmul needs compute capability 8.9")
    weight = quantize_to_fp8(torch.randn(256, 512, generator=gen(7)))
    if input_scale is not None:
        weight = Fp8Weight(weight.data, weight.scale, torch.tensor(input_scale))
    bias = torch.randn(256, generator=gen(8))
    fast = QuantLinear(weight, bias, compute_dtype=torch.bfloat16, use_scaled_mm=True).cuda()
    exact = QuantLinear(weight, bias, compute_dtype=torch.bfloat16).cuda()
    x = torch.randn(3, 40, 512, generator=gen(9)).cuda()

    assert fast._native_mm_applies(x.bfloat16())
    got, want = fast(x).float(), exact(x).float()
    assert got.shape == (3, 40, 256)
    assert ((got - want).norm() / want.norm()).item() < 0.05  # activations are rounded to fp8 too
