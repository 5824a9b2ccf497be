"""fp8 weights: values plus fp32 scales, their expansion, quantization to fp8, and the fp8 matmul.

File layouts (ComfyUI's plain, "scaled fp8" and `comfy_quant` fp8 files) are read by
`zturbo.checkpoints.fp8`; this module only represents and computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from zturbo.quant.weight import QuantWeight, cuda_capability, row_or_tensor_scale

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
FP8_KEY = "fp8"  # the compiled dequantizer both fp8 formats share (their dtype is a guard, not code)


@dataclass(frozen=True, eq=False)
class Fp8Weight(QuantWeight):
    """fp8 values and their fp32 scale: () per tensor or (out, 1) per row; `input_scale` feeds fp8 matmul."""

    data: Tensor
    scale: Tensor
    input_scale: Tensor | None = None
    full_precision_mm: bool = False  # the file asks for dequantize-then-matmul on this layer

    ROWS: ClassVar[tuple[str, ...]] = ("data",)
    SCALES: ClassVar[tuple[str, ...]] = ("scale",)
    SHARED: ClassVar[tuple[str, ...]] = ("input_scale",)

    def __post_init__(self) -> None:
        if self.data.dtype not in FP8_DTYPES:
            raise ValueError(f"Fp8Weight needs float8 data, got {self.data.dtype}")
        object.__setattr__(self, "scale", row_or_tensor_scale(self.scale, self.data.shape))
        if self.input_scale is not None and (
            self.input_scale.ndim or self.input_scale.dtype != torch.float32
        ):
            object.__setattr__(self, "input_scale", self.input_scale.float().reshape(()))

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def label(self) -> str:
        return str(self.data.dtype).removeprefix("torch.")

    @property
    def expand_key(self) -> str:
        return FP8_KEY

    def expand(self, dtype: torch.dtype) -> Tensor:
        return dequantize_fp8(self.data, self.scale, dtype)

    def native_linear_applies(self, x: Tensor, compute_dtype: torch.dtype) -> bool:
        """Row-wise scaled `_scaled_mm`: e4m3, bf16, dimensions of 16, Ada/Hopper or newer."""
        return (
            not self.full_precision_mm
            and self.data.dtype == torch.float8_e4m3fn
            and compute_dtype == torch.bfloat16
            and x.is_cuda
            and self.shape[1] % 16 == 0
            and self.shape[0] % 16 == 0
            and cuda_capability(x.device) >= (8, 9)
        )

    def native_linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        return fp8_scaled_linear(x, self.data, self.scale, bias, self.input_scale)


def dequantize_fp8(data: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """`w.float() * scale`, rounded once to `dtype` (ComfyUI multiplies in the compute dtype instead)."""
    return (data.float() * scale.to(data.device)).to(dtype)


def fp8_scaled_linear(
    x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None, input_scale: Tensor | None = None
) -> Tensor:
    """Row-wise scaled fp8 matmul: activations quantized per row (or with the file's static scale)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if input_scale is None:
        x_scale = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    else:
        x_scale = input_scale.float().reshape(1, 1).expand(x2.shape[0], 1).contiguous()
    xq = (x2.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    w_scale = weight_scale.float().reshape(-1, 1).expand(weight.shape[0], 1).reshape(1, -1).contiguous()
    out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=x.dtype)
    return out.reshape(*shape[:-1], weight.shape[0])


def quantize_to_fp8(
    weight: Tensor, *, per_row: bool = True, dtype: torch.dtype = torch.float8_e4m3fn
) -> Fp8Weight:
    """fp8 with amax scaling; per-row scales (the default) keep small rows precise and suit `_scaled_mm`.

    `dtype` is e4m3 (3 mantissa bits, the default) or e5m2 (UNETLoader's `fp8_e5m2`: more range, less
    precision); either way the scale maps each row's largest magnitude onto the format's maximum.
    """
    fp8_max = torch.finfo(dtype).max
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().amax()
    scale = amax.clamp(min=1e-12) / fp8_max
    data = (w / scale).clamp(-fp8_max, fp8_max).to(dtype)
    return Fp8Weight(data, scale)
