"""fp8 weights: values plus fp32 scales, their expansion, quantization to fp8, and the fp8 matmul.

File layouts (ComfyUI's plain, "scaled fp8" and `comfy_quant` fp8 files) are read by
`zturbo.checkpoints.fp8`; this module only represents and computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


@dataclass(frozen=True, eq=False)
class Fp8Weight:
    """fp8 values and their fp32 scale: () per tensor or (out, 1) per row; `input_scale` feeds fp8 matmul."""

    data: Tensor
    scale: Tensor
    input_scale: Tensor | None = None
    full_precision_mm: bool = False  # the file asks for dequantize-then-matmul on this layer

    def __post_init__(self) -> None:
        if self.data.dtype not in FP8_DTYPES:
            raise ValueError(f"Fp8Weight needs float8 data, got {self.data.dtype}")
        scale = self.scale.float()
        if scale.numel() == 1:
            scale = scale.reshape(())
        elif self.data.ndim >= 1 and scale.numel() == self.data.shape[0]:
            scale = scale.reshape(-1, *([1] * (self.data.ndim - 1)))
        else:
            raise ValueError(f"scale of {scale.numel()} values fits neither per tensor nor per row")
        object.__setattr__(self, "scale", scale)
        if self.input_scale is not None:
            object.__setattr__(self, "input_scale", self.input_scale.float().reshape(()))

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.numel() + self.scale.numel() * 4

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Fp8Weight:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Fp8Weight(move(self.data), move(self.scale), move(self.input_scale), self.full_precision_mm)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_fp8(self.data, self.scale, dtype)

    def chunk(self, parts: int, dim: int = 0) -> list[Fp8Weight]:
        """Split rows into `parts` views (a fused qkv into q, k, v); per-row scales split with them."""
        if dim != 0 or self.data.shape[0] % parts:
            raise ValueError(f"cannot split fp8 {tuple(self.data.shape)} into {parts} along dim {dim}")
        scales = self.scale.chunk(parts, dim=0) if self.scale.ndim else [self.scale] * parts
        return [
            Fp8Weight(data, scale, self.input_scale, self.full_precision_mm)
            for data, scale in zip(self.data.chunk(parts, dim=0), scales, strict=True)
        ]


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
