"""int8 weights with fp32 scales, optionally stored rotated ("convrot"), as ComfyUI's `int8_tensorwise`.

Layout (ComfyUI's `TensorWiseINT8Layout`, from comfy-kitchen): values `int8 (out, in)`, a `weight_scale`
per tensor `()` or per row `(out, 1)`; the weight is `q · scale`. With `convrot` the file stores the
weight rotated within groups of `g` input features (`g` a power of 4, 256 by default): `W_rot = W · Hᵀ`
per group, where `H` is the normalised "regular" Hadamard matrix `H₄ ⊗ … ⊗ H₄ / √g` with
`H₄ = [[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]]`. `H` is symmetric and its own inverse, so the
weight is recovered as `(q · scale) · H` per group, and a matmul can instead rotate the activations:
`x · Wᵀ = (x · H) · W_rotᵀ` (that is what ComfyUI's int8 kernels do).

Expansion here applies `H` without a matmul: `H₄` acting on four values is `sum − 2 · reversed`, applied
along each of the `log₄ g` axes of a group. On the integer values that is exact in float32 in any order
(|sums| ≤ 128·g < 2²⁴), and `1/√g` is a power of two, so every element is `q·H` rounded once after its
scale: `(Σ q·h) · (scale / √g)`, one float32 rounding, then one to the compute dtype. (ComfyUI scales
first and rotates with a float32 matmul, which rounds at every partial sum: results agree to a few ulps.)

`native_linear` is the int8 tensor-core matmul (`torch._int_mm`, CUDA only): activations rotated
(convrot), quantized per row to int8 (as ComfyUI does), multiplied with the stored int8 values, scaled
back. It rounds the activations, so it is opt-in (`QuantLinear(use_scaled_mm=True)`) and, not having run
on a GPU yet, listed as unverified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from zturbo.quant.weight import QuantWeight, cuda_capability, row_or_tensor_scale

INT8_MM_CAPABILITY = (8, 0)  # int8 tensor cores through cuBLASLt: Ampere and newer (Ada, Hopper)
INT8_MM_MIN_ROWS = 17  # torch._int_mm on CUDA needs more than 16 rows of activations


def is_rotation_group(size: int) -> bool:
    """A regular Hadamard matrix exists for powers of 4 (4, 16, 64, 256, ...)."""
    return size >= 4 and size & (size - 1) == 0 and (size.bit_length() - 1) % 2 == 0


def hadamard_groups(x: Tensor, group_size: int) -> Tensor:
    """`x · H±` within consecutive groups of `group_size` along the last dimension (H± unnormalised, ±1).

    float32 in and out; exact when the inputs are integers (sums stay far below 2²⁴).
    """
    levels = (group_size.bit_length() - 1) // 2
    shape = x.shape
    y = x.reshape(*shape[:-1], shape[-1] // group_size, *([4] * levels))
    del x  # each stage then holds two full-size float32 tensors at most (~9 bytes an element in all)
    for axis in range(y.ndim - levels, y.ndim):
        # H₄ row i is all ones but a -1 at 3 - i: (H₄ v)_i = sum(v) - 2·v_{3-i}.
        y = y.flip(axis).mul_(-2).add_(y.sum(axis, keepdim=True))
    return y.reshape(shape)


@dataclass(frozen=True, eq=False)
class Int8Weight(QuantWeight):
    """int8 values, an fp32 scale per tensor `()` or per row `(out, 1)`, and the convrot group size (0: none)."""

    data: Tensor
    scale: Tensor
    convrot_groupsize: int = 0
    full_precision_mm: bool = False  # the file asks for dequantize-then-matmul on this layer

    ROWS: ClassVar[tuple[str, ...]] = ("data",)
    SCALES: ClassVar[tuple[str, ...]] = ("scale",)

    def __post_init__(self) -> None:
        if self.data.dtype != torch.int8 or self.data.ndim != 2:
            raise ValueError(
                f"Int8Weight needs 2-D int8 data, got {self.data.dtype} {tuple(self.data.shape)}"
            )
        object.__setattr__(self, "scale", row_or_tensor_scale(self.scale, self.data.shape))
        g = self.convrot_groupsize
        if g and (not is_rotation_group(g) or self.data.shape[1] % g):
            raise ValueError(f"convrot group size {g} must be a power of 4 dividing {self.data.shape[1]}")

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def label(self) -> str:
        return f"int8_convrot{self.convrot_groupsize}" if self.convrot_groupsize else "int8"

    @property
    def expand_key(self) -> str:
        return "int8_convrot" if self.convrot_groupsize else "int8"

    def expand(self, dtype: torch.dtype) -> Tensor:
        g = self.convrot_groupsize
        if not g:
            return (self.data.float() * self.scale).to(dtype)
        rotated = hadamard_groups(self.data.float(), g)
        return (rotated * (self.scale * (1.0 / math.sqrt(g)))).to(dtype)

    def native_linear_applies(self, x: Tensor, compute_dtype: torch.dtype) -> bool:
        out_features, in_features = self.shape
        return (
            not self.full_precision_mm
            and x.is_cuda
            and x.numel() // max(in_features, 1) >= INT8_MM_MIN_ROWS
            and in_features % 8 == 0
            and out_features % 8 == 0
            and cuda_capability(x.device) >= INT8_MM_CAPABILITY
        )

    def native_linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """int8 × int8 → int32 on tensor cores, activations quantized per row (unverified on a GPU)."""
        shape, g = x.shape, self.convrot_groupsize
        x2 = x.reshape(-1, shape[-1]).float()
        if g:
            x2 = hadamard_groups(x2, g) * (1.0 / math.sqrt(g))
        x_scale = (x2.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-30)
        xq = (x2 / x_scale).round().clamp(-128, 127).to(torch.int8)
        acc = torch._int_mm(xq, self.data.t())  # (rows, out) int32; the weight's transpose is column-major
        out = (acc.float() * (x_scale * self.scale.reshape(1, -1))).to(x.dtype)
        if bias is not None:
            out = out + bias
        return out.reshape(*shape[:-1], self.shape[0])

    def compute_note(self, native: bool) -> str | None:
        if native:
            return (
                f"{self.label}: torch._int_mm on CUDA (sm_80+; activations quantized per row to int8), "
                "dequantize-then-matmul elsewhere"
            )
        return f"{self.label}: dequantized to the compute dtype for each matmul"
