"""GGUF quantized tensors: `GGUFWeight` and torch dequantization kernels for every supported type.

The kernels are plain vectorised torch (no loops over blocks, no data-dependent branches), written from
the block layouts in ggml (`ggml-common.h`) with the `gguf` package's numpy `quants.py` as the reference
they are tested against. Each one does its float32 arithmetic in the same order as that reference, so
CPU results are bit-exact. Reading GGUF files is `zturbo.checkpoints.gguf`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import Tensor

from zturbo.quant.weight import QuantWeight

Q = GGMLQuantizationType
QK_K = 256


@dataclass(frozen=True, eq=False)
class GGUFWeight(QuantWeight):
    """A quantized tensor: raw ggml blocks (uint8, rows of bytes) plus what is needed to expand them."""

    data: Tensor
    qtype: GGMLQuantizationType
    shape: torch.Size

    ROWS: ClassVar[tuple[str, ...]] = ("data",)

    def __post_init__(self) -> None:
        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        expected = self.shape.numel() // block_size * type_size
        if self.data.dtype != torch.uint8 or self.data.numel() != expected:
            raise ValueError(f"{self.qtype.name} {tuple(self.shape)} needs {expected} uint8 bytes")

    @property
    def label(self) -> str:
        return self.qtype.name

    @property
    def expand_key(self) -> GGMLQuantizationType:
        return self.qtype

    def expand(self, dtype: torch.dtype) -> Tensor:
        return dequantize_raw(self.data, self.qtype, self.shape, dtype)

    def can_split_rows(self) -> bool:
        """Blocks run along a row, so a row split is a byte-row split, as long as every row is whole blocks."""
        block_size = GGML_QUANT_SIZES[self.qtype][0]
        return len(self.shape) >= 1 and self.shape[1:].numel() % block_size == 0

    def _with_rows(self, tensors: dict[str, Tensor | None], rows: int) -> GGUFWeight:
        shape = torch.Size((rows, *self.shape[1:]))
        return GGUFWeight(tensors["data"], self.qtype, shape)  # type: ignore[arg-type]


def dequantize(weight: GGUFWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """Expand a GGUFWeight on its own device: float32 arithmetic, one rounding to `dtype` at the end."""
    return dequantize_raw(weight.data, weight.qtype, weight.shape, dtype)


def dequantize_raw(
    data: Tensor, qtype: GGMLQuantizationType, shape: torch.Size, dtype: torch.dtype
) -> Tensor:
    """The same on loose parts, for modules that keep the bytes as a buffer (`.to(device)` moves it)."""
    blocks = data.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    return DEQUANTIZERS[qtype](blocks).to(dtype).reshape(shape)


def _f16(blocks: Tensor, start: int) -> Tensor:
    """An fp16 field at byte `start` of every block, as (n_blocks, 1) float32."""
    return blocks[:, start : start + 2].view(torch.float16).float()


def _bits(x: Tensor, bits: int) -> Tensor:
    """Split bytes (..., B) into (..., 8 // bits, B); field k holds bits [k*bits, (k+1)*bits)."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=x.device).view(-1, 1)
    return (x.unsqueeze(-2) >> shifts) & ((1 << bits) - 1)


def _q32_low(qs: Tensor) -> Tensor:
    """16 bytes of nibbles -> 32 values: low nibbles are elements 0-15, high nibbles 16-31."""
    return _bits(qs, 4).reshape(qs.shape[0], 32)


def _q32_high(qh: Tensor) -> Tensor:
    """4 bytes (one little-endian uint32) -> bit j of element j, as 32 values."""
    return _bits(qh.unsqueeze(-1), 1).reshape(qh.shape[0], 32)


def _plain(dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    return lambda b: b.view(dtype).float()


def _q8_0(b: Tensor) -> Tensor:
    return b[:, 2:].view(torch.int8).float() * _f16(b, 0)


def _q4_0(b: Tensor) -> Tensor:
    return _f16(b, 0) * (_q32_low(b[:, 2:]).float() - 8)


def _q4_1(b: Tensor) -> Tensor:
    return _f16(b, 0) * _q32_low(b[:, 4:]).float() + _f16(b, 2)


def _q5_0(b: Tensor) -> Tensor:
    q = _q32_low(b[:, 6:]) | (_q32_high(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q.float() - 16)


def _q5_1(b: Tensor) -> Tensor:
    q = _q32_low(b[:, 8:]) | (_q32_high(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


def _q2_k(b: Tensor) -> Tensor:
    """scales[16] (4-bit scale | 4-bit min) · qs[64] (2-bit) · d · dmin; 16 groups of 16."""
    n, scales = b.shape[0], b[:, :16]
    dl = (_f16(b, 80) * (scales & 0xF).float()).view(n, 16, 1)
    ml = (_f16(b, 82) * (scales >> 4).float()).view(n, 16, 1)
    q = _bits(b[:, 16:80].reshape(n, 2, 32), 2).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(b: Tensor) -> Tensor:
    """hmask[32] · qs[64] (low 2 bits) · scales[12] (16 six-bit scales) · d; 16 groups of 16."""
    n, scales = b.shape[0], b[:, 96:108]
    low = _bits(scales[:, :8], 4).reshape(n, 16)
    high = _bits(scales[:, 8:], 2).reshape(n, 16)
    dl = (_f16(b, 108) * ((low | (high << 4)).float() - 32)).view(n, 16, 1)
    ql = _bits(b[:, 32:96].reshape(n, 2, 32), 2).reshape(n, 16, 16)
    hm = _bits(b[:, :32], 1).reshape(n, 16, 16)
    q = ql.float() - 4 * (hm ^ 1).float()  # a cleared hmask bit subtracts 4
    return (dl * q).reshape(n, QK_K)


def _k_scale_min(scales: Tensor) -> tuple[Tensor, Tensor]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4)."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0xF) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.float(), mn.float()


def _q4_k(b: Tensor) -> Tensor:
    """d · dmin · scales[12] · qs[128] (4-bit); 8 groups of 32."""
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d, dm = (_f16(b, 0) * sc).view(n, 8, 1), (_f16(b, 2) * mn).view(n, 8, 1)
    q = _bits(b[:, 16:].reshape(n, 4, 32), 4).reshape(n, 8, 32).float()
    return (d * q - dm).reshape(n, QK_K)


def _q5_k(b: Tensor) -> Tensor:
    """d · dmin · scales[12] · qh[32] (5th bit) · qs[128]; 8 groups of 32."""
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d, dm = (_f16(b, 0) * sc).view(n, 8, 1), (_f16(b, 2) * mn).view(n, 8, 1)
    ql = _bits(b[:, 48:].reshape(n, 4, 32), 4).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 1)
    return (d * (ql | (qh << 4)).float() - dm).reshape(n, QK_K)


def _q6_k(b: Tensor) -> Tensor:
    """ql[128] (low 4 bits) · qh[64] (high 2 bits) · scales[16] (int8) · d; 16 groups of 16."""
    n = b.shape[0]
    d = (_f16(b, 208) * b[:, 192:208].view(torch.int8).float()).view(n, 16, 1)
    ql = _bits(b[:, :128].reshape(n, 2, 64), 4).reshape(n, 8, 32)
    qh = _bits(b[:, 128:192].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    q = (ql | (qh << 4)).float() - 32
    return (d * q.view(n, 16, 16)).reshape(n, QK_K)


DEQUANTIZERS: dict[GGMLQuantizationType, Callable[[Tensor], Tensor]] = {
    Q.F32: _plain(torch.float32),
    Q.F16: _plain(torch.float16),
    Q.BF16: _plain(torch.bfloat16),
    Q.Q8_0: _q8_0,
    Q.Q6_K: _q6_k,
    Q.Q5_K: _q5_k,
    Q.Q5_1: _q5_1,
    Q.Q5_0: _q5_0,
    Q.Q4_K: _q4_k,
    Q.Q4_1: _q4_1,
    Q.Q4_0: _q4_0,
    Q.Q3_K: _q3_k,
    Q.Q2_K: _q2_k,
}
