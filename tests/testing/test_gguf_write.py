"""Torch GGUF quantizers (bit-exact with the `gguf` package where it has a quantizer) and row splits."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from zturbo.quant.fp8 import Fp8Weight, quantize_to_fp8
from zturbo.quant.gguf import GGUFWeight, dequantize_raw
from zturbo.quant.gguf_quantize import can_quantize, quantize


def weights(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Normal values over six orders of magnitude, an all-zero block and equal-magnitude ties."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * torch.logspace(-3, 2, shape[0]).unsqueeze(1)
    w[0, :32] = 0
    w[1, :4] = torch.tensor([3.0, -3.0, 3.0, -3.0])
    return w


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0], ids=lambda q: q.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_quantizer_is_bit_exact_with_gguf_package(qtype: Q, dtype: torch.dtype) -> None:
    w = weights((40, 3 * 256), seed=int(qtype)).to(dtype)
    expected = gguf.quants.quantize(w.float().numpy(), qtype)
    got = quantize(w, qtype)
    assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), expected)


@pytest.mark.parametrize(("qtype", "max_rel_rms"), [(Q.Q6_K, 0.03), (Q.Q4_K, 0.12)], ids=lambda v: str(v))
def test_k_quant_encoders_write_valid_blocks(qtype: Q, max_rel_rms: float) -> None:
    """No reference quantizer exists: the reference *dequantizer* must read our blocks back closely."""
    w = torch.randn(24, 512, generator=torch.Generator().manual_seed(3))
    blocks = quantize(w, qtype)
    reference = torch.from_numpy(gguf.quants.dequantize(blocks.numpy(), qtype)).reshape(w.shape)
    assert torch.equal(dequantize_raw(blocks, qtype, w.shape, torch.float32), reference)
    assert float((reference - w).norm() / w.norm()) < max_rel_rms


def test_rows_must_be_whole_blocks() -> None:
    assert can_quantize(Q.Q4_0, (8, 64)) and not can_quantize(Q.Q4_K, (8, 64))
    with pytest.raises(ValueError, match="cannot quantize"):
        quantize(torch.zeros(8, 170), Q.Q8_0)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K], ids=lambda q: q.name)
def test_gguf_weight_chunk_splits_whole_rows_without_copying(qtype: Q) -> None:
    w = torch.randn(12, 256, generator=torch.Generator().manual_seed(4))
    fused = GGUFWeight(quantize(w, qtype), qtype, w.shape)
    parts = fused.chunk(3)
    expanded = fused.dequantize()
    for part, rows in zip(parts, expanded.chunk(3), strict=True):
        assert part.shape == (4, 256) and torch.equal(part.dequantize(), rows)
        assert part.data.untyped_storage().data_ptr() == fused.data.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="cannot split"):
        fused.chunk(5)


@pytest.mark.parametrize("per_row", [True, False])
def test_fp8_weight_chunk_keeps_each_rows_scale(per_row: bool) -> None:
    fused = quantize_to_fp8(torch.randn(9, 16, generator=torch.Generator().manual_seed(5)), per_row=per_row)
    fused = Fp8Weight(fused.data, fused.scale, torch.tensor(0.5), full_precision_mm=True)
    parts = fused.chunk(3)
    for part, rows in zip(parts, fused.dequantize().chunk(3), strict=True):
        assert torch.equal(part.dequantize(), rows)
        assert part.input_scale == 0.5 and part.full_precision_mm
