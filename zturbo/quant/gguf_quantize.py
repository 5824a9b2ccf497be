"""Torch GGUF quantizers: write quantized files on the GPU in seconds instead of numpy minutes.

Q8_0 and Q4_0 repeat the `gguf` package's numpy reference (`gguf.quants`, itself bit-exact with
ggml-quants.c) operation for operation in float32, so on the CPU the bytes are identical (tested).
Q4_K and Q6_K have no reference quantizer in the package; ours are the plain "amax per group" encoders
(llama.cpp searches scales more carefully), valid blocks whose values the reference dequantizer reads
back within half a quantization step. They exist to write test and benchmark files, not to publish.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from torch import Tensor


def _roundf(x: Tensor) -> Tensor:
    """Round half away from zero, as ggml's `roundf` and gguf's `np_roundf` do."""
    a = x.abs()
    floored = a.floor()
    return x.sign() * (floored + (2 * (a - floored)).floor())


def _inverse(d: Tensor) -> Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def _f16_bytes(d: Tensor) -> Tensor:
    return d.to(torch.float16).view(torch.uint8).reshape(d.shape[0], -1)


def _q8_0(blocks: Tensor) -> Tensor:
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    qs = _roundf(blocks * _inverse(d)).to(torch.int8).view(torch.uint8)
    return torch.cat([_f16_bytes(d), qs], dim=1)


def _q4_0(blocks: Tensor) -> Tensor:
    n = blocks.shape[0]
    imax = blocks.abs().argmax(dim=-1, keepdim=True)
    d = blocks.gather(-1, imax) / -8
    qs = (blocks * _inverse(d) + 8.5).trunc().clamp(0, 15).to(torch.uint8).reshape(n, 2, 16)
    return torch.cat([_f16_bytes(d), qs[:, 0] | (qs[:, 1] << 4)], dim=1)


def _pack(values: Tensor, bits: int, fields: int) -> Tensor:
    """Inverse of the dequantizers' `_bits`: (..., fields, B) small ints -> (..., B) bytes."""
    shifts = torch.arange(0, bits * fields, bits, dtype=torch.uint8, device=values.device).view(-1, 1)
    return (values.to(torch.uint8) << shifts).sum(dim=-2, dtype=torch.uint8)


def _q6_k(blocks: Tensor) -> Tensor:
    """16 groups of 16: int8 group scales times one fp16 d; 6-bit values stored as 4 + 2 bits."""
    n = blocks.shape[0]
    groups = blocks.reshape(n, 16, 16)
    group_scale = groups.abs().amax(dim=-1) / 31
    d = group_scale.amax(dim=-1, keepdim=True) / 127
    scales = _roundf(group_scale * _inverse(d)).clamp(-128, 127)
    step = (d.to(torch.float16).float() * scales).unsqueeze(-1)
    q = (_roundf(groups * _inverse(step)).clamp(-32, 31) + 32).to(torch.uint8).reshape(n, 256)
    low = (q & 0xF).reshape(n, 2, 2, 64)  # (half, nibble, byte)
    high = (q >> 4).reshape(n, 2, 4, 32)  # (half, bit pair, byte)
    ql = _pack(low, 4, 2).reshape(n, 128)
    qh = _pack(high, 2, 4).reshape(n, 64)
    return torch.cat([ql, qh, scales.to(torch.int8).view(torch.uint8), _f16_bytes(d)], dim=1)


def _q4_k(blocks: Tensor) -> Tensor:
    """8 groups of 32: value = d·scale·q − dmin·min with 6-bit scales and mins, 4-bit q."""
    n = blocks.shape[0]
    groups = blocks.reshape(n, 8, 32)
    low = groups.amin(dim=-1).clamp(max=0)
    span = (groups.amax(dim=-1) - low) / 15
    d = span.amax(dim=-1, keepdim=True) / 63
    dmin = (-low).amax(dim=-1, keepdim=True) / 63
    sc = _roundf(span * _inverse(d)).clamp(0, 63)
    mn = _roundf(-low * _inverse(dmin)).clamp(0, 63)
    step = (d.to(torch.float16).float() * sc).unsqueeze(-1)
    offset = (dmin.to(torch.float16).float() * mn).unsqueeze(-1)
    q = _roundf((groups + offset) * _inverse(step)).clamp(0, 15).to(torch.uint8)
    qs = _pack(q.reshape(n, 4, 2, 32), 4, 2).reshape(n, 128)
    sc, mn = sc.to(torch.uint8), mn.to(torch.uint8)
    scales = torch.cat(
        [
            sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
            mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
            (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4),
        ],
        dim=1,
    )
    return torch.cat([_f16_bytes(d), _f16_bytes(dmin), scales, qs], dim=1)


QUANTIZERS: dict[Q, Callable[[Tensor], Tensor]] = {Q.Q8_0: _q8_0, Q.Q4_0: _q4_0, Q.Q6_K: _q6_k, Q.Q4_K: _q4_k}


def can_quantize(qtype: Q, shape: tuple[int, ...]) -> bool:
    """A 2-D tensor whose rows are whole blocks (ggml quantizes along rows)."""
    return qtype in QUANTIZERS and len(shape) == 2 and shape[1] % GGML_QUANT_SIZES[qtype][0] == 0


def quantize(weight: Tensor, qtype: Q) -> Tensor:
    """(rows, cols) float tensor -> (rows, bytes per row) uint8 on the weight's device."""
    if not can_quantize(qtype, tuple(weight.shape)):
        raise ValueError(f"cannot quantize {tuple(weight.shape)} to {qtype.name}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = weight.detach().float().reshape(-1, block_size)
    return QUANTIZERS[qtype](blocks).reshape(weight.shape[0], -1)
