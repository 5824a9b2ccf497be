"""MXFP8 weights (ComfyUI's `mxfp8`): fp8 values in blocks of 32 with power-of-two (E8M0) block scales.

Layout (ComfyUI's `TensorCoreMXFP8Layout`, from comfy-kitchen): `weight` float8_e4m3fn `(out, in)`,
`weight_scale` E8M0 (one byte: the exponent, bias 127), one per 32 consecutive input features of a row,
stored in cuBLAS's tiled order; the reader undoes the tiling, so `block_scale` here is row-major uint8
`(out, in/32)`. The weight is `value · 2^(e − 127)`; like ComfyUI, exponent byte 0 reads as 0 (not 2⁻¹²⁷).
Expansion is exact in float32 (a power of two times an fp8 value), then one rounding to the compute dtype:
ComfyUI's arithmetic.

Matmul: dequantize-then-matmul everywhere. The microscaled fp8 tensor-core matmul needs a Blackwell GPU
(sm_100) and is not implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from zturbo.quant.fp8 import FP8_DTYPES
from zturbo.quant.weight import QuantWeight

MXFP8_BLOCK = 32


def e8m0_values(exponents: Tensor) -> Tensor:
    """uint8 E8M0 exponents -> float32 powers of two, built from their bits (byte 0 gives 0)."""
    return (exponents.to(torch.int32) << 23).view(torch.float32)


@dataclass(frozen=True, eq=False)
class MXFP8Weight(QuantWeight):
    """fp8 values and row-major uint8 E8M0 block exponents (one per 32 inputs)."""

    data: Tensor
    block_scale: Tensor

    ROWS: ClassVar[tuple[str, ...]] = ("data", "block_scale")

    def __post_init__(self) -> None:
        if self.data.dtype not in FP8_DTYPES or self.data.ndim != 2 or self.data.shape[1] % MXFP8_BLOCK:
            raise ValueError(f"mxfp8 needs 2-D fp8 data with inputs a multiple of 32, got {self.data.shape}")
        blocks = (self.data.shape[0], self.data.shape[1] // MXFP8_BLOCK)
        if self.block_scale.dtype != torch.uint8 or tuple(self.block_scale.shape) != blocks:
            raise ValueError(f"mxfp8 block exponents must be uint8 {blocks}, got {self.block_scale.shape}")

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def label(self) -> str:
        return "mxfp8"

    def expand(self, dtype: torch.dtype) -> Tensor:
        rows, in_features = self.shape
        values = self.data.float().reshape(rows, -1, MXFP8_BLOCK)
        return (values * e8m0_values(self.block_scale).unsqueeze(-1)).reshape(rows, in_features).to(dtype)

    def compute_note(self, native: bool) -> str | None:
        return (
            "mxfp8: dequantized to the compute dtype for each matmul (the microscaled fp8 matmul needs a "
            "Blackwell GPU and is not implemented)"
        )
