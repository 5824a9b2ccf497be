"""NVFP4 weights (ComfyUI's `nvfp4`): fp4 e2m1 values in blocks of 16 with fp8 block scales.

Layout (ComfyUI's `TensorCoreNVFP4Layout`, from comfy-kitchen): `weight` uint8 `(out, in/2)`, two e2m1
codes a byte with element `2i` in the high nibble; `weight_scale` float8_e4m3fn, one per 16 consecutive
input features of a row, stored in cuBLAS's tiled ("swizzled") order; `weight_scale_2` an fp32 scalar.
The weight is `e2m1 · (weight_scale_2 · weight_scale)`. The reader (`zturbo.checkpoints.fp8`) undoes
the tiling, so `block_scale` here is row-major `(out, in/16)`: rows split and stack like the values.
An optional `pre_quant_scale` `(in,)` multiplies the input features before the matmul (ComfyUI scales
the activations by it); expanding folds it into the weight's columns.

e2m1 codes: bit 3 sign, bits 2-1 exponent, bit 0 mantissa; magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6. They are
decoded with integer arithmetic (no table), exactly, then `value · (scale · block)`: the per-block factor
is one float32 rounding, the product another, then one rounding to the compute dtype. At float32 this is
ComfyUI's arithmetic in its order; at bf16 ComfyUI multiplies in bf16 (more roundings).

Matmul: dequantize-then-matmul everywhere. The fp4 tensor-core matmul needs a Blackwell GPU (sm_100) and
is not implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from zturbo.quant.weight import QuantWeight, row_or_tensor_scale

NVFP4_BLOCK = 16
E2M1_MAX = 6.0


def e2m1_values(codes: Tensor) -> Tensor:
    """uint8 e2m1 codes (0..15) -> float32 values, exactly (code 8 is -0.0).

    Integer steps on bytes, one float32 tensor: at most ~7 bytes an element are held at once.
    """
    exponent, mantissa = (codes & 7) >> 1, codes & 1
    # twice the magnitude: m for subnormals (exponent 0), (2 + m) · 2^(e-1) otherwise
    twice = torch.where(exponent == 0, mantissa, ((mantissa + 2) << exponent) >> 1)
    del exponent, mantissa
    return torch.where(codes >= 8, -0.5, 0.5).mul_(twice)


def unpack_nibbles(data: Tensor) -> Tensor:
    """(rows, n) bytes -> (rows, 2n) codes; element 2i is the high nibble of byte i."""
    return torch.stack([data >> 4, data & 15], dim=-1).reshape(data.shape[0], -1)


@dataclass(frozen=True, eq=False)
class NVFP4Weight(QuantWeight):
    """Packed e2m1 codes, row-major fp8 block scales, an fp32 scale (`weight_scale_2`), an input pre-scale."""

    data: Tensor
    block_scale: Tensor
    scale: Tensor
    pre_quant_scale: Tensor | None = None

    ROWS: ClassVar[tuple[str, ...]] = ("data", "block_scale")
    SCALES: ClassVar[tuple[str, ...]] = ("scale",)
    SHARED: ClassVar[tuple[str, ...]] = ("pre_quant_scale",)

    def __post_init__(self) -> None:
        rows, in_features = self.shape
        if self.data.dtype != torch.uint8 or self.data.ndim != 2 or in_features % NVFP4_BLOCK:
            raise ValueError(
                f"nvfp4 needs (rows, in/2) uint8 with in a multiple of 16, got {self.data.shape}"
            )
        blocks = (rows, in_features // NVFP4_BLOCK)
        if self.block_scale.dtype != torch.float8_e4m3fn or tuple(self.block_scale.shape) != blocks:
            raise ValueError(
                f"nvfp4 block scales must be float8_e4m3fn {blocks}, got {self.block_scale.shape}"
            )
        object.__setattr__(self, "scale", row_or_tensor_scale(self.scale, self.shape))
        pre = self.pre_quant_scale
        if pre is not None and pre.numel() != in_features:
            raise ValueError(f"nvfp4 pre_quant_scale has {pre.numel()} values for {in_features} inputs")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.data.shape[0], self.data.shape[1] * 2))

    @property
    def label(self) -> str:
        return "nvfp4"

    def expand(self, dtype: torch.dtype) -> Tensor:
        rows, in_features = self.shape
        values = e2m1_values(unpack_nibbles(self.data)).reshape(rows, -1, NVFP4_BLOCK)
        factor = self.scale * self.block_scale.float()  # () or (rows, 1) times (rows, blocks)
        weight = (values * factor.unsqueeze(-1)).reshape(rows, in_features)
        del values
        if self.pre_quant_scale is not None:
            weight = weight.mul_(self.pre_quant_scale.float().reshape(1, -1))
        return weight.to(dtype)

    def compute_note(self, native: bool) -> str | None:
        return (
            "nvfp4: dequantized to the compute dtype for each matmul (the fp4 matmul needs a Blackwell GPU "
            "and is not implemented)"
        )
