"""How many bytes each component will occupy once loaded, read from file headers only.

The memory planner needs real sizes, not guesses: a Q4_0 DiT is 4.5 GB, a bf16 one 12.3 GB, an fp32
diffusers folder loaded as bf16 is still 12.3 GB. Headers give every tensor's shape and stored type,
which is enough: plain floats cost the compute dtype's bytes (they are cast on load), quantized
matrices (GGUF blocks; ComfyUI's fp8, int8, nvfp4 and mxfp8 layers, told apart by their companion
tensors: `checkpoints.fp8.header_formats`) keep their stored size as zturbo holds them, and a quantized
embedding is expanded on load.
Bytes are grouped by transformer block, in execution order, because blocks are what gets streamed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, detect
from zturbo.checkpoints.fp8 import SCALE_SUFFIXES, header_formats
from zturbo.checkpoints.reader import TensorInfo, open_checkpoint, torch_dtype_of
from zturbo.quant.selection import dit_tensor_is_quantized

_DIT_BLOCK = re.compile(r"^(noise_refiner|context_refiner|layers)\.(\d+)\.")
_TE_BLOCK = re.compile(r"^(?:model\.)?(?:layers|blk)\.(\d+)\.")
_DIT_ORDER = {"noise_refiner": 0, "context_refiner": 1, "layers": 2}
# Quantized DiT matrices expanded together once a block's Q‖K‖V and W1‖W3 are fused into one layer
# (`QuantLinear.concatenated`): the on-the-fly expansion then holds the whole group at once.
_DIT_FUSED = re.compile(r"^(.*)\.(?:attention\.(?:to_[qkv]|qkv)|feed_forward\.w[13])\.weight$")
_FP8_NAMES = ("F8_E4M3", "F8_E5M2")
_EMBEDDINGS = ("embed_tokens.weight", "token_embd.weight")
# Block sizes of the block-scaled formats, whose scales zturbo holds row-major (one byte per block).
_BLOCKS = {"nvfp4": 16, "mxfp8": 32}
_FUSED_QKV = ".attention.qkv.weight"  # the ComfyUI layout's fused q‖k‖v, split into three on load


@dataclass(frozen=True)
class ComponentSize:
    """Loaded bytes of one component: per streamable block (execution order) and the rest."""

    blocks: tuple[int, ...] = ()
    other: int = 0
    # Elements of the largest quantized matrix expanded on the fly per call (a fused Q‖K‖V or W1‖W3
    # group of a DiT block counts as one matrix: that is how the DiT runs it).
    largest_quantized: int = 0
    hidden: int = 0  # model width (activation estimates scale with it)

    @property
    def total(self) -> int:
        return self.other + sum(self.blocks)

    @property
    def max_block(self) -> int:
        return max(self.blocks, default=0)

    @property
    def quantized(self) -> bool:
        return self.largest_quantized > 0


def _files(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.suffix in (".safetensors", ".sft", ".gguf"))
    return [source]


def _tensor_bytes(
    name: str, info: TensorInfo, dtype_bytes: int, fp8_on_load: bool, kind: str | None, companions: dict
) -> tuple[int, int]:
    """(bytes once loaded, elements if it stays quantized else 0)."""
    numel = math.prod(info.shape)
    matrix = len(info.shape) == 2 and not name.endswith(_EMBEDDINGS)
    if name.endswith(SCALE_SUFFIXES) or name.endswith("scaled_fp8"):
        return 0, 0  # counted with their weight, as zturbo stores them
    if torch_dtype_of(info.dtype) is None and info.dtype in GGMLQuantizationType.__members__:
        if not matrix:  # expanded on load (a quantized embedding or norm)
            return numel * dtype_bytes, 0
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[info.dtype]]
        return numel // block_size * type_size, numel
    if kind is not None:
        elements = numel * 2 if kind == "nvfp4" else numel  # nvfp4 packs two values a byte
        if not matrix:
            return elements * dtype_bytes, 0
        parts = 3 if name.endswith(_FUSED_QKV) else 1
        return numel + _companion_bytes(kind, elements, companions, parts), elements
    if (info.dtype in _FP8_NAMES or fp8_on_load) and matrix:
        return numel + 4 * info.shape[0], numel
    dtype = torch_dtype_of(info.dtype)
    if dtype is not None and not dtype.is_floating_point:
        return numel * dtype.itemsize, 0
    return numel * dtype_bytes, 0


def _companion_bytes(kind: str, elements: int, companions: dict[str, TensorInfo], parts: int) -> int:
    """Bytes of a ComfyUI quantized weight's scales as zturbo holds them: fp32 scales as stored, block
    scales row-major (the file's tiling pads them), a pre-scale in its stored dtype. A fused weight split
    into `parts` (qkv) gives each part its own copy of what is not per row."""
    total = 0
    for suffix, info in companions.items():
        count = math.prod(info.shape)
        if suffix == "weight_scale" and kind in _BLOCKS:
            total += elements // _BLOCKS[kind]
        elif suffix in ("weight_scale", "weight_scale_2", "scale_weight"):
            total += 4 * count * (parts if count == 1 else 1)
        elif suffix == "pre_quant_scale":
            dtype = torch_dtype_of(info.dtype)
            total += count * (dtype.itemsize if dtype is not None else 4) * parts
    return total or (4 * parts if kind == "fp8" else 0)  # plain fp8: a scale of 1


def measure(source: Path, kind: str, *, dtype: torch.dtype, weight_dtype: str = "default") -> ComponentSize:
    """Loaded size of a component file (or diffusers folder) under `dtype` and `weight_dtype`."""
    blocks: dict[tuple[int, int], int] = {}
    groups: dict[str, int] = {}  # fused DiT groups -> quantized elements
    other = largest = hidden = 0
    for file in _files(source):
        ckpt = open_checkpoint(file)
        prefix = detect(ckpt).prefix
        formats = header_formats(ckpt.tensors)
        for raw_name, info in ckpt.tensors.items():
            name = raw_name[len(prefix) :] if prefix and raw_name.startswith(prefix) else raw_name
            fp8_on_load = (
                kind == DIT and weight_dtype != "default" and dit_tensor_is_quantized(name, info.shape)
            )
            stored_as = formats.get(raw_name)
            companions = _companions(ckpt.tensors, raw_name) if stored_as else {}
            nbytes, quantized = _tensor_bytes(name, info, dtype.itemsize, fp8_on_load, stored_as, companions)
            largest = max(largest, quantized)
            if quantized and kind == DIT and (m := _DIT_FUSED.match(name)):
                group = f"{m[1]}.{'ffn' if 'feed_forward' in name else 'attention'}"
                groups[group] = groups.get(group, 0) + quantized
            hidden = hidden or _hidden(name, info.shape)
            key = _block_key(name, kind)
            if key is None:
                other += nbytes
            else:
                blocks[key] = blocks.get(key, 0) + nbytes
    largest = max([largest, *groups.values()])
    return ComponentSize(tuple(blocks[k] for k in sorted(blocks)), other, largest, hidden)


def _companions(tensors: dict[str, TensorInfo], weight: str) -> dict[str, TensorInfo]:
    layer = weight.removesuffix(".weight")
    suffixes = ("weight_scale", "weight_scale_2", "scale_weight", "pre_quant_scale")
    return {s: tensors[f"{layer}.{s}"] for s in suffixes if f"{layer}.{s}" in tensors}


def _hidden(name: str, shape: tuple[int, ...]) -> int:
    if name == "cap_embedder.1.weight" and len(shape) == 2:
        return shape[0]
    if name.endswith(_EMBEDDINGS) and len(shape) == 2:
        return shape[1]
    return 0


def _block_key(name: str, kind: str) -> tuple[int, int] | None:
    if kind == DIT and (m := _DIT_BLOCK.match(name)):
        return _DIT_ORDER[m[1]], int(m[2])
    if kind == TEXT_ENCODER and (m := _TE_BLOCK.match(name)):
        return 0, int(m[1])
    return None
