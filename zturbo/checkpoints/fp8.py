"""ComfyUI's quantized checkpoints (fp8, int8, nvfp4, mxfp8), recognised by their tensors (never by file name).

Layouts, read from ComfyUI (`comfy/utils.py:convert_old_quants`, `comfy/ops.py:mixed_precision_ops`,
`comfy/quant_ops.py:QUANT_ALGOS`) and the comfy-kitchen layouts it uses:

1. plain: weights stored as `float8_e4m3fn` / `float8_e5m2`, no scale (scale 1);
2. legacy "scaled fp8": a `scaled_fp8` marker tensor (its dtype names the fp8 type; 2 elements mean
   "do the matmul in full precision"), and per Linear fp32 scalars `<layer>.scale_weight` and optionally
   `<layer>.scale_input`; the weight is `w.to(compute) * scale_weight`; a `scale_input` of 1 means none;
3. mixed precision: per layer `<layer>.comfy_quant`, a uint8 tensor holding JSON such as
   `{"format": "float8_e4m3fn"}` (or the same layer table in the safetensors metadata key
   `_quantization_metadata`); layers without one stay as stored (bf16 in the `*_mixed` files). Formats:
   - `float8_e4m3fn`, `float8_e5m2`: `weight` fp8, `weight_scale` fp32, optional `input_scale`
     (`zturbo.quant.fp8.Fp8Weight`);
   - `int8_tensorwise`: `weight` int8, `weight_scale` fp32 per tensor or per row; `"convrot": true` (at
     the top level or under `"params"`) with `"convrot_groupsize"` (default 256) for Hadamard-rotated
     weights, the `*_int8_convrot` files (`zturbo.quant.int8.Int8Weight`);
   - `nvfp4`: `weight` uint8 (two fp4 values a byte), `weight_scale` fp8 block scales (one per 16),
     `weight_scale_2` fp32, optional `input_scale` (activations: unused here) and `pre_quant_scale`
     (`zturbo.quant.nvfp4.NVFP4Weight`);
   - `mxfp8`: `weight` fp8, `weight_scale` E8M0 block exponents (one per 32), optional `input_scale`
     (unused) (`zturbo.quant.mxfp8.MXFP8Weight`).
   Block scales are stored in cuBLAS's tiled order ("swizzled"); `untile_block_scales` turns them
   row-major, so quantized weights split and stack by rows like the others. Weight dimensions must be
   multiples of the block (ComfyUI pads odd ones; Z-Image's are all multiples of 128).

`split_quantized_state_dict` turns all of these into `QuantWeight`s and consumes every marker and scale
key, so the caller can still insist that each remaining key lands in the model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zturbo.checkpoints.reader import TensorInfo
from zturbo.errors import ModelFileError
from zturbo.quant.fp8 import FP8_DTYPES, Fp8Weight
from zturbo.quant.int8 import Int8Weight
from zturbo.quant.mxfp8 import MXFP8_BLOCK, MXFP8Weight
from zturbo.quant.nvfp4 import NVFP4_BLOCK, NVFP4Weight
from zturbo.quant.weight import QuantWeight

COMFY_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
MIXED_METADATA_KEY = "_quantization_metadata"
DEFAULT_CONVROT_GROUP = 256
# Companion tensors of a quantized `<layer>.weight` (all consumed by the split; sizes skip them too).
SCALE_SUFFIXES = (
    ".scale_weight",
    ".scale_input",
    ".weight_scale",
    ".weight_scale_2",
    ".input_scale",
    ".pre_quant_scale",
    ".comfy_quant",
)


def split_quantized_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    source: str | Path = "state dict",
) -> tuple[dict[str, Tensor], dict[str, QuantWeight]]:
    """Split off quantized weights (keyed `<layer>.weight`) from plain tensors; marker/scale keys are consumed.

    `metadata` is the safetensors header metadata (for `_quantization_metadata`); `source` names the file
    in errors. Raises `ModelFileError` for unsupported `comfy_quant` formats or inconsistent layers.
    """
    sd = dict(state_dict)
    fp8: dict[str, QuantWeight] = {}
    for layer, conf in _mixed_layers(sd, metadata, source).items():
        fp8[f"{layer}.weight"] = _mixed_weight(sd, layer, conf, source)
    full_precision = _pop_legacy_markers(sd)
    for key in [k for k in sd if k.endswith(".scale_weight")]:
        layer = key.removesuffix(".scale_weight")
        weight = _legacy_weight(sd, layer, full_precision, source)
        if weight is not None:
            fp8[f"{layer}.weight"] = weight
    for key in [k for k, v in sd.items() if v.dtype in FP8_DTYPES]:
        fp8[key] = Fp8Weight(sd.pop(key), torch.ones(()))
    return sd, fp8


split_fp8_state_dict = split_quantized_state_dict  # the name from when fp8 was all there was

_FP8_NAMES = ("F8_E4M3", "F8_E5M2")


def header_formats(tensors: Mapping[str, TensorInfo]) -> dict[str, str]:
    """`<layer>.weight` -> "fp8" | "int8" | "nvfp4" | "mxfp8", from a header alone (names and dtypes).

    For what needs no tensor data (the memory planner's sizes, `zturbo models`): the `comfy_quant` JSON
    is data, but each format's companions tell it apart. nvfp4 has a `weight_scale_2`; mxfp8 a 2-D
    one-byte `weight_scale` (E8M0); int8 an I8 weight with a `weight_scale`; fp8 an fp8 weight (or, untyped,
    a U8 one with a `comfy_quant` and an fp32 `weight_scale`).
    """
    formats: dict[str, str] = {}
    for key, info in tensors.items():
        if not key.endswith(".weight"):
            continue
        layer = key.removesuffix(".weight")
        scale = tensors.get(f"{layer}.weight_scale")
        if f"{layer}.weight_scale_2" in tensors:
            formats[key] = "nvfp4"
        elif scale is not None and scale.dtype in ("F8_E8M0", "U8") and len(scale.shape) == 2:
            formats[key] = "mxfp8"
        elif info.dtype == "I8" and scale is not None:
            formats[key] = "int8"
        elif info.dtype in _FP8_NAMES or (
            info.dtype == "U8" and f"{layer}.comfy_quant" in tensors and scale is not None
        ):
            formats[key] = "fp8"
    return formats


def _mixed_layers(
    sd: dict[str, Tensor], metadata: Mapping[str, str] | None, source: str | Path
) -> dict[str, dict[str, Any]]:
    """Layer -> config, from `<layer>.comfy_quant` tensors and the `_quantization_metadata` header."""
    layers: dict[str, Any] = {}
    if metadata and MIXED_METADATA_KEY in metadata:
        try:
            layers.update(json.loads(metadata[MIXED_METADATA_KEY])["layers"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(source, f"unreadable {MIXED_METADATA_KEY} metadata ({exc})") from exc
    for key in [k for k in sd if k.endswith(".comfy_quant")]:
        raw = sd.pop(key)
        try:
            layers[key.removesuffix(".comfy_quant")] = json.loads(raw.cpu().numpy().tobytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelFileError(source, f"{key} is not JSON ({exc})") from exc
    return {layer: conf if isinstance(conf, dict) else {"format": conf} for layer, conf in layers.items()}


def _mixed_weight(sd: dict[str, Tensor], layer: str, conf: dict[str, Any], source: str | Path) -> QuantWeight:
    fmt = conf.get("format")
    read = _FORMATS.get(fmt)  # type: ignore[arg-type]
    if read is None:
        supported = ", ".join(_FORMATS)
        raise ModelFileError(source, f"layer {layer!r} uses quantization {fmt!r}; supported: {supported}")
    assert isinstance(fmt, str)  # a key of _FORMATS
    weight = sd.pop(f"{layer}.weight", None)
    if weight is None:
        raise ModelFileError(source, f"{layer}.comfy_quant is present but {layer}.weight is missing")
    try:
        return read(_Layer(sd, layer, fmt, conf, source), weight)
    except ValueError as exc:  # a weight class refusing inconsistent tensors
        raise ModelFileError(source, f"layer {layer!r} ({fmt}): {exc}") from exc


class _Layer:
    """One `comfy_quant` layer being read: its config and its companion tensors, popped as they are used."""

    def __init__(self, sd: dict[str, Tensor], layer: str, fmt: str, conf: dict[str, Any], source: str | Path):
        self.sd, self.layer, self.fmt, self.conf, self.source = sd, layer, fmt, conf, source

    def pop(self, suffix: str, *, required: bool = False) -> Tensor | None:
        value = self.sd.pop(f"{self.layer}.{suffix}", None)
        if value is None and required:
            raise ModelFileError(self.source, f"{self.layer} is {self.fmt} but has no {self.layer}.{suffix}")
        return value

    def setting(self, name: str, default: Any) -> Any:
        """A format setting, at the top level of the config or under `"params"` (both occur)."""
        params = self.conf.get("params")
        nested = params.get(name, default) if isinstance(params, dict) else default
        return self.conf.get(name, nested)

    def typed(self, tensor: Tensor, dtype: torch.dtype, what: str = "weight") -> Tensor:
        """`tensor` as `dtype`: some writers store bytes untyped (uint8/int8 of the same width)."""
        if tensor.dtype == dtype:
            return tensor
        untyped = not tensor.is_floating_point() or tensor.dtype == torch.float8_e8m0fnu
        if untyped and tensor.element_size() == dtype.itemsize:
            return tensor.view(dtype)
        raise ModelFileError(
            self.source, f"{self.layer}.{what} is {tensor.dtype}, but comfy_quant says {self.fmt}"
        )


def _read_fp8(layer: _Layer, weight: Tensor) -> QuantWeight:
    weight = layer.typed(weight, COMFY_FORMATS[layer.fmt])
    scale = layer.pop("weight_scale")
    input_scale = layer.pop("input_scale")
    full_precision = bool(layer.conf.get("full_precision_matrix_mult", False))
    return Fp8Weight(weight, torch.ones(()) if scale is None else scale, input_scale, full_precision)


def _read_int8(layer: _Layer, weight: Tensor) -> QuantWeight:
    weight = layer.typed(weight, torch.int8)
    scale = layer.pop("weight_scale", required=True)
    group = (
        int(layer.setting("convrot_groupsize", DEFAULT_CONVROT_GROUP))
        if layer.setting("convrot", False)
        else 0
    )
    full_precision = bool(layer.conf.get("full_precision_matrix_mult", False))
    return Int8Weight(weight, scale, group, full_precision)  # type: ignore[arg-type]


def _read_nvfp4(layer: _Layer, weight: Tensor) -> QuantWeight:
    weight = layer.typed(weight, torch.uint8)
    tiled = layer.typed(layer.pop("weight_scale", required=True), torch.float8_e4m3fn, "weight_scale")  # type: ignore[arg-type]
    scale = layer.pop("weight_scale_2", required=True)
    layer.pop("input_scale")  # the activations' fp4 scale: only a native fp4 matmul would use it
    pre_quant_scale = layer.pop("pre_quant_scale")
    if weight.ndim != 2:
        raise ModelFileError(
            layer.source, f"{layer.layer}.weight of nvfp4 must be 2-D, got {tuple(weight.shape)}"
        )
    rows, blocks = weight.shape[0], weight.shape[1] * 2 // NVFP4_BLOCK
    block_scale = untile_block_scales(tiled, rows, blocks, layer)
    return NVFP4Weight(weight, block_scale, scale, pre_quant_scale)  # type: ignore[arg-type]


def _read_mxfp8(layer: _Layer, weight: Tensor) -> QuantWeight:
    weight = layer.typed(weight, torch.float8_e4m3fn)
    tiled = layer.typed(layer.pop("weight_scale", required=True), torch.uint8, "weight_scale")  # type: ignore[arg-type]
    layer.pop("input_scale")
    if weight.ndim != 2:
        raise ModelFileError(
            layer.source, f"{layer.layer}.weight of mxfp8 must be 2-D, got {tuple(weight.shape)}"
        )
    block_scale = untile_block_scales(tiled, weight.shape[0], weight.shape[1] // MXFP8_BLOCK, layer)
    return MXFP8Weight(weight, block_scale)


_FORMATS: dict[str, Callable[[_Layer, Tensor], QuantWeight]] = {
    "float8_e4m3fn": _read_fp8,
    "float8_e5m2": _read_fp8,
    "int8_tensorwise": _read_int8,
    "nvfp4": _read_nvfp4,
    "mxfp8": _read_mxfp8,
}


def untile_block_scales(tiled: Tensor, rows: int, cols: int, layer: _Layer | None = None) -> Tensor:
    """Block scales from cuBLAS's tiled layout to row-major `(rows, cols)` (a copy; the file stays mapped).

    The tiled layout (cuBLAS "block scaling factors layout", as ComfyUI writes it): rows padded to 128 and
    columns to 4, cut into 128×4 tiles stored one after another (row of tiles by row of tiles), each tile
    holding its 512 values in the order [row % 32][row // 32 within the tile][column % 4].
    """
    row_tiles, col_tiles = math.ceil(rows / 128), math.ceil(cols / 4)
    if tiled.numel() != row_tiles * 128 * col_tiles * 4:
        where = f"{layer.layer}.weight_scale" if layer else "block scales"
        raise ModelFileError(
            layer.source if layer else "state dict",
            f"{where} holds {tiled.numel()} values; a {rows}x{cols} grid of block scales, tiled, needs "
            f"{row_tiles * 128 * col_tiles * 4}",
        )
    tiles = tiled.reshape(row_tiles, col_tiles, 32, 4, 4)  # [row tile, column tile, r % 32, r // 32, c % 4]
    grid = tiles.permute(0, 3, 2, 1, 4).reshape(row_tiles * 128, col_tiles * 4)
    return grid[:rows, :cols].contiguous()


def _pop_legacy_markers(sd: dict[str, Tensor]) -> bool:
    """Drop `scaled_fp8` markers (any model prefix); True when one asks for full-precision matmul."""
    markers = [k for k in sd if k == "scaled_fp8" or k.endswith(".scaled_fp8")]
    return any(sd.pop(k).numel() == 2 for k in markers)


def _legacy_weight(
    sd: dict[str, Tensor], layer: str, full_precision: bool, source: str | Path
) -> Fp8Weight | None:
    """`<layer>.scale_weight` (+ `scale_input`): an Fp8Weight, or the scale folded into a plain weight."""
    scale = sd.pop(f"{layer}.scale_weight")
    input_scale = sd.pop(f"{layer}.scale_input", None)
    if input_scale is not None and bool((input_scale == 1).all()):
        input_scale = None
    weight = sd.get(f"{layer}.weight")
    if weight is None:
        raise ModelFileError(source, f"{layer}.scale_weight is present but {layer}.weight is missing")
    if weight.dtype not in FP8_DTYPES:  # ComfyUI multiplies any weight by its scale; do the same, once
        sd[f"{layer}.weight"] = (weight.float() * scale.float()).to(weight.dtype)
        return None
    return Fp8Weight(sd.pop(f"{layer}.weight"), scale, input_scale, full_precision)
