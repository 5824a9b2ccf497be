"""GGUF files: memory-mapped reading and llama.cpp Qwen3 names.

Quantized tensors stay quantized (`zturbo.quant.gguf.GGUFWeight`, raw blocks) so a 4-bit DiT costs ~4 bits
a weight in RAM and VRAM; `zturbo.quant` expands them on whatever device they sit on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gguf import GGMLQuantizationType, GGUFReader
from torch import Tensor

from zturbo.errors import ModelFileError
from zturbo.quant.gguf import DEQUANTIZERS, GGUFWeight

Q = GGMLQuantizationType
# Metadata key with which city96's ComfyUI-GGUF converter records the true shape of a reshaped tensor.
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."
DIT_PREFIXES = ("model.diffusion_model.",)
_MAX_METADATA_ARRAY = 1024  # tokenizer vocabularies (150k strings) are skipped: nothing here reads them

_PLAIN_DTYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.F64: torch.float64, Q.I8: torch.int8}
_PLAIN_DTYPES |= {Q.I16: torch.int16, Q.I32: torch.int32, Q.I64: torch.int64}


@dataclass
class GGUFFile:
    """What `read_gguf` found: tensors keep pointing into the file's memory map."""

    path: Path
    architecture: str | None
    metadata: dict[str, Any]
    tensors: dict[str, Tensor | GGUFWeight]


# ---------------------------------------------------------------- reading


def read_gguf(path: str | Path) -> GGUFFile:
    """Map a GGUF file; plain types become zero-copy tensors, quantized ones `GGUFWeight`s.

    The map is copy-on-write (`mode="c"`): tensors are writable, so torch needs no copy and a stray
    in-place op changes private pages only, never the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "no such file")
    try:
        reader = GGUFReader(path, mode="c")
    except (ValueError, IndexError, KeyError, TypeError, OSError) as exc:
        raise ModelFileError(path, f"not a readable GGUF file, or truncated ({exc})") from exc
    if reader.byte_order != "I":
        raise ModelFileError(path, "big-endian GGUF files are not supported")
    metadata = _read_metadata(reader)
    tensors = {t.name: _to_torch(path, t, metadata.get(ORIG_SHAPE_KEY + t.name)) for t in reader.tensors}
    arch = metadata.get("general.architecture")
    return GGUFFile(path, arch if isinstance(arch, str) else None, metadata, tensors)


def _read_metadata(reader: GGUFReader) -> dict[str, Any]:
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.") and len(field.data) <= _MAX_METADATA_ARRAY
    }


def _to_torch(path: Path, t: Any, orig_shape: list[int] | None) -> Tensor | GGUFWeight:
    qtype = Q(t.tensor_type)
    shape = torch.Size(orig_shape if orig_shape else reversed(t.shape.tolist()))  # GGUF lists dims reversed
    if qtype not in _PLAIN_DTYPES and qtype not in DEQUANTIZERS:
        supported = ", ".join(q.name for q in (*_PLAIN_DTYPES, *DEQUANTIZERS))
        raise ModelFileError(path, f"tensor {t.name!r} has type {qtype.name}; supported: {supported}")
    raw = torch.from_numpy(t.data)
    try:
        if qtype in _PLAIN_DTYPES:
            return raw.reshape(shape)
        if qtype == Q.BF16:  # the reader has no numpy bfloat16 and hands over bytes
            return raw.view(torch.bfloat16).reshape(shape)
        return GGUFWeight(raw, qtype, shape)
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError(path, f"tensor {t.name!r}: {exc}") from exc


def strip_dit_prefix(name: str) -> str:
    """DiT GGUFs carry the ComfyUI/original names, sometimes under `model.diffusion_model.`."""
    for prefix in DIT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name



# ---------------------------------------------------------------- llama.cpp Qwen3 names

# llama.cpp's converter stores Qwen2/Qwen3 Q and K weights in Hugging Face row order: only the
# LLaMA-architecture class (convert_hf_to_gguf.py `LlamaModel.permute`) interleaves rotary halves,
# because ggml's LLaMA rope is the interleaved kind, while Qwen uses NEOX rope (= HF rotate_half).
# ComfyUI-GGUF likewise un-permutes only files whose architecture is "llama". So the map is names only.
_QWEN3_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# `output` is the LM head (absent when tied, as in Qwen3-4B); Qwen3Model has none, so callers drop it.
_QWEN3_TOP = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
_LLAMA_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_HF_BLOCK = re.compile(r"layers\.(\d+)\.([\w.]+)\.(weight|bias)")


def llama_cpp_qwen3_to_hf(name: str) -> str:
    """`blk.3.attn_q.weight` -> `layers.3.self_attn.q_proj.weight` (Hugging Face `Qwen3Model` names)."""
    if m := _LLAMA_BLOCK.fullmatch(name):
        if m[2] in _QWEN3_BLOCK:
            return f"layers.{m[1]}.{_QWEN3_BLOCK[m[2]]}.{m[3]}"
    elif (stem := name.rpartition(".")[0]) in _QWEN3_TOP and name.endswith((".weight", ".bias")):
        return _QWEN3_TOP[stem] + name[len(stem) :]
    known = ", ".join([*_QWEN3_TOP, *(f"blk.N.{k}" for k in _QWEN3_BLOCK)])
    raise ValueError(f"{name!r} is not a llama.cpp Qwen3 tensor name (known: {known})")


def hf_to_llama_cpp_qwen3(name: str) -> str:
    """The inverse of `llama_cpp_qwen3_to_hf`, for writing test files and error messages."""
    if m := _HF_BLOCK.fullmatch(name):
        for llama, hf in _QWEN3_BLOCK.items():
            if hf == m[2]:
                return f"blk.{m[1]}.{llama}.{m[3]}"
    stem = name.rpartition(".")[0]
    for llama, hf in _QWEN3_TOP.items():
        if hf == stem:
            return llama + name[len(stem) :]
    raise ValueError(f"{name!r} is not a Hugging Face Qwen3Model parameter name")
