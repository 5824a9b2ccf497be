"""ComfyUI fp8 checkpoints, recognised by their tensors (never by file name).

Three layouts exist in the wild (read from ComfyUI's `comfy/utils.py:convert_old_quants` and
`comfy/ops.py:mixed_precision_ops`):

1. plain: weights stored as `float8_e4m3fn` / `float8_e5m2`, no scale (scale 1);
2. legacy "scaled fp8": a `scaled_fp8` marker tensor (its dtype names the fp8 type; 2 elements mean
   "do the matmul in full precision"), and per Linear fp32 scalars `<layer>.scale_weight` and optionally
   `<layer>.scale_input`; the weight is `w.to(compute) * scale_weight`; a `scale_input` of 1 means none;
3. mixed precision: per layer `<layer>.comfy_quant`, a uint8 tensor holding JSON such as
   `{"format": "float8_e4m3fn"}`, with `<layer>.weight_scale` and optionally `<layer>.input_scale`
   (or the same layer table in the safetensors metadata key `_quantization_metadata`).

`split_fp8_state_dict` turns all three into `Fp8Weight`s and consumes every marker and scale key, so the
caller can still insist that each remaining key lands in the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zturbo.errors import ModelFileError
from zturbo.quant.fp8 import FP8_DTYPES, Fp8Weight

COMFY_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
MIXED_METADATA_KEY = "_quantization_metadata"


def split_fp8_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    source: str | Path = "state dict",
) -> tuple[dict[str, Tensor], dict[str, Fp8Weight]]:
    """Split off fp8 weights (keyed `<layer>.weight`) from plain tensors; marker/scale keys are consumed.

    `metadata` is the safetensors header metadata (for `_quantization_metadata`); `source` names the file
    in errors. Raises `ModelFileError` for unsupported `comfy_quant` formats or inconsistent layers.
    """
    sd = dict(state_dict)
    fp8: dict[str, Fp8Weight] = {}
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


def _mixed_weight(sd: dict[str, Tensor], layer: str, conf: dict[str, Any], source: str | Path) -> Fp8Weight:
    fmt = conf.get("format")
    if fmt not in COMFY_FORMATS:
        supported = ", ".join(COMFY_FORMATS)
        raise ModelFileError(source, f"layer {layer!r} uses quantization {fmt!r}; supported: {supported}")
    weight = sd.pop(f"{layer}.weight", None)
    if weight is None:
        raise ModelFileError(source, f"{layer}.comfy_quant is present but {layer}.weight is missing")
    if weight.dtype == torch.uint8:  # some writers store the fp8 bytes untyped
        weight = weight.view(COMFY_FORMATS[fmt])
    if weight.dtype != COMFY_FORMATS[fmt]:
        raise ModelFileError(source, f"{layer}.weight is {weight.dtype}, but comfy_quant says {fmt}")
    scale = sd.pop(f"{layer}.weight_scale", torch.ones(()))
    input_scale = sd.pop(f"{layer}.input_scale", None)
    return Fp8Weight(weight, scale, input_scale, bool(conf.get("full_precision_matrix_mult", False)))


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
