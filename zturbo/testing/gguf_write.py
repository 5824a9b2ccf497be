"""Write Z-Image DiT and Qwen3 text-encoder GGUF files laid out like the published ones.

Used by the tests (tiny models in every quant type) and the GPU benchmark (full-size Q8_0/Q4_0 files).
Which tensors are quantized follows the published files (city96's ComfyUI-GGUF tooling, leejet, unsloth):
in a DiT only the main blocks' 2-D weights; embedders, refiners, final layer and pad tokens stay BF16
and every 1-D tensor F32. In a text encoder (llama.cpp naming) every 2-D weight whose rows are whole
blocks is quantized, the token embedding included, as llama-quantize does.

Files are written in two passes (tensor table, then data one tensor at a time), so writing a 6B model
holds one tensor's bytes at a time, and the quantization runs wherever `device` says (the GPU: seconds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from torch import Tensor

from zturbo.checkpoints.gguf import hf_to_llama_cpp_qwen3
from zturbo.quant.gguf_quantize import can_quantize, quantize
from zturbo.quant.selection import dit_tensor_is_quantized


def _stored_type(tensor: Tensor, qtype: Q, quantized: bool, plain: Q) -> Q:
    if quantized and can_quantize(qtype, tuple(tensor.shape)):
        return qtype
    return Q.F32 if tensor.ndim <= 1 else plain


def _encode(tensor: Tensor, qtype: Q, device: torch.device | str) -> np.ndarray:
    if qtype == Q.F32:
        return tensor.float().cpu().numpy()
    if qtype == Q.BF16:
        return tensor.to(torch.bfloat16).contiguous().view(torch.uint8).cpu().numpy()
    return quantize(tensor.to(device), qtype).cpu().numpy()


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block_size * type_size


def write_gguf(
    path: Path,
    arch: str,
    tensors: Mapping[str, tuple[Tensor, Q]],
    *,
    device: torch.device | str = "cpu",
    metadata: Mapping[str, int | str] | None = None,
) -> Path:
    """Write `name -> (tensor, stored type)` with one tensor's bytes in memory at a time."""
    writer = gguf.GGUFWriter(path, arch)
    for key, value in (metadata or {}).items():
        if isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
    for name, (tensor, qtype) in tensors.items():
        shape = tuple(tensor.shape)
        nbytes = _nbytes(shape, qtype)
        if qtype == Q.F32:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        else:
            byte_shape = (*shape[:-1], nbytes // max(1, int(np.prod(shape[:-1], dtype=np.int64))))
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor, qtype in tensors.values():
        writer.write_tensor_data(_encode(tensor, qtype, device))
    writer.close()
    return path


def write_dit_gguf(
    path: Path,
    state_dict: Mapping[str, Tensor],
    qtype: Q,
    *,
    device: torch.device | str = "cpu",
    prefix: str = "",
    plain: Q = Q.BF16,
) -> Path:
    """A DiT GGUF from a ComfyUI/original-layout state dict (city96's arch name `lumina2`)."""
    tensors = {
        prefix + name: (t, _stored_type(t, qtype, dit_tensor_is_quantized(name, tuple(t.shape)), plain))
        for name, t in state_dict.items()
    }
    return write_gguf(path, "lumina2", tensors, device=device)


def write_text_encoder_gguf(
    path: Path,
    state_dict: Mapping[str, Tensor],
    qtype: Q,
    *,
    device: torch.device | str = "cpu",
    arch: str = "qwen3",
) -> Path:
    """A llama.cpp-named text encoder GGUF from a Hugging Face `Qwen3Model` state dict."""
    tensors = {
        hf_to_llama_cpp_qwen3(name): (t, _stored_type(t, qtype, True, Q.F32))
        for name, t in state_dict.items()
    }
    blocks = 1 + max(int(m[1]) for n in state_dict if (m := re.match(r"layers\.(\d+)\.", n)))
    return write_gguf(path, arch, tensors, device=device, metadata={f"{arch}.block_count": blocks})
