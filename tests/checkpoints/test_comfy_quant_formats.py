"""ComfyUI's `comfy_quant` int8 / nvfp4 / mxfp8 layers -> QuantWeights, every companion key consumed.

Values are checked against the numpy references of `zturbo.testing.synthetic_quant` (bit-exact: see
tests/quant/test_quant_formats.py for why); this file checks what the reader takes from the file.
"""

from __future__ import annotations

import json

import pytest
import torch

from zturbo.checkpoints.fp8 import header_formats, split_quantized_state_dict, untile_block_scales
from zturbo.checkpoints.reader import TensorInfo
from zturbo.errors import ModelFileError
from zturbo.quant.fp8 import Fp8Weight
from zturbo.quant.int8 import Int8Weight
from zturbo.quant.mxfp8 import MXFP8Weight
from zturbo.quant.nvfp4 import NVFP4Weight
from zturbo.testing.synthetic_quant import comfy_quant_layer, comfy_quant_reference

TYPES = {
    "float8_e4m3fn": Fp8Weight,
    "int8_tensorwise": Int8Weight,
    "int8_convrot": Int8Weight,
    "nvfp4": NVFP4Weight,
    "nvfp4_prescaled": NVFP4Weight,
    "mxfp8": MXFP8Weight,
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def layer(fmt: str, prefix: str = "blk", rows: int = 64, cols: int = 256, **kw) -> dict[str, torch.Tensor]:
    w = torch.randn(rows, cols, generator=gen(rows + cols))
    return {f"{prefix}.{k}": v for k, v in comfy_quant_layer(w, fmt, **kw).items()}


def conf_of(sd: dict[str, torch.Tensor], prefix: str = "blk") -> dict:
    return json.loads(sd[f"{prefix}.comfy_quant"].numpy().tobytes())


def blob(conf: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)


@pytest.mark.parametrize("fmt", list(TYPES))
def test_each_layout_becomes_its_weight_with_the_reference_values(fmt: str) -> None:
    sd = {**layer(fmt, convrot_groupsize=64), "blk.bias": torch.zeros(64), "norm.weight": torch.ones(8)}
    tensors = {k.removeprefix("blk."): v for k, v in sd.items() if k.startswith("blk.")}
    conf = conf_of(sd)
    plain, quantized = split_quantized_state_dict(sd)
    assert set(plain) == {"blk.bias", "norm.weight"} and set(quantized) == {"blk.weight"}
    weight = quantized["blk.weight"]
    assert type(weight) is TYPES[fmt] and weight.shape == (64, 256)
    assert torch.equal(weight.dequantize(), torch.from_numpy(comfy_quant_reference(tensors, conf)))
    if fmt == "int8_convrot":
        assert weight.convrot_groupsize == 64 and weight.scale.shape == (64, 1)
    if fmt == "nvfp4_prescaled":
        assert weight.pre_quant_scale is not None and weight.pre_quant_scale.dtype == torch.bfloat16


def test_convrot_settings_under_params_and_the_default_group() -> None:
    sd = layer("int8_convrot", convrot_groupsize=256)
    sd["blk.comfy_quant"] = blob({"format": "int8_tensorwise", "params": {"convrot": True}})
    assert split_quantized_state_dict(sd)[1]["blk.weight"].convrot_groupsize == 256
    sd = layer("int8_convrot", convrot_groupsize=16)
    sd["blk.comfy_quant"] = blob(
        {"format": "int8_tensorwise", "params": {"convrot": True, "convrot_groupsize": 16}}
    )
    assert split_quantized_state_dict(sd)[1]["blk.weight"].convrot_groupsize == 16


def test_untyped_storage_and_the_metadata_table() -> None:
    """Bytes stored as U8 (fp8 values, E8M0 exponents) read as their types; `_quantization_metadata`
    (full key names) names the formats instead of `comfy_quant` tensors."""
    sd = {**layer("mxfp8", "a"), **layer("int8_tensorwise", "b"), **layer("nvfp4", "c")}
    formats = {name: conf_of(sd, name) for name in "abc"}
    for name in "abc":
        del sd[f"{name}.comfy_quant"]
    sd["a.weight"] = sd["a.weight"].view(torch.uint8)
    sd["a.weight_scale"] = sd["a.weight_scale"].view(torch.uint8)
    sd["c.weight_scale"] = sd["c.weight_scale"].view(torch.uint8)
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": formats})}
    plain, quantized = split_quantized_state_dict(sd, metadata=metadata)
    assert plain == {}
    assert [type(quantized[f"{n}.weight"]) for n in "abc"] == [MXFP8Weight, Int8Weight, NVFP4Weight]


def test_tiled_block_scales_are_untiled_row_major() -> None:
    tiled = torch.arange(256 * 8, dtype=torch.int32).reshape(256, 8)
    grid = untile_block_scales(tiled, 200, 5)
    # (r, c) sits in tile (r // 128, c // 4) at (r % 32)·16 + ((r % 128) // 32)·4 + c % 4
    for r, c in [(0, 0), (1, 0), (31, 3), (32, 0), (127, 2), (128, 0), (199, 4)]:
        offset = ((r // 128) * 2 + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
        assert grid[r, c] == offset, (r, c)


@pytest.mark.parametrize(
    ("fmt", "drop", "message"),
    [
        ("int8_tensorwise", "blk.weight_scale", r"blk is int8_tensorwise but has no blk\.weight_scale"),
        ("nvfp4", "blk.weight_scale_2", r"blk is nvfp4 but has no blk\.weight_scale_2"),
        ("nvfp4", "blk.weight_scale", r"blk is nvfp4 but has no blk\.weight_scale"),
        ("mxfp8", "blk.weight_scale", r"blk is mxfp8 but has no blk\.weight_scale"),
    ],
)
def test_missing_companions_are_named(fmt: str, drop: str, message: str) -> None:
    sd = layer(fmt)
    del sd[drop]
    with pytest.raises(ModelFileError, match=rf"q\.safetensors.*{message}"):
        split_quantized_state_dict(sd, source="q.safetensors")


def test_inconsistent_layers_are_refused() -> None:
    sd = layer("nvfp4")
    sd["blk.weight_scale"] = sd["blk.weight_scale"][:64]  # a tiled grid must hold 128 rows
    with pytest.raises(
        ModelFileError, match=r"blk\.weight_scale holds 1024 values; a 64x16 grid.*needs 2048"
    ):
        split_quantized_state_dict(sd)
    sd = layer("int8_tensorwise")
    sd["blk.weight"] = sd["blk.weight"].to(torch.bfloat16)
    with pytest.raises(ModelFileError, match=r"blk\.weight is torch\.bfloat16, but comfy_quant says int8"):
        split_quantized_state_dict(sd)
    sd = layer("int8_convrot", convrot_groupsize=256)
    sd["blk.comfy_quant"] = blob({"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 48})
    with pytest.raises(ModelFileError, match=r"'blk' \(int8_tensorwise\): convrot group size 48"):
        split_quantized_state_dict(sd)


def test_header_formats_tell_the_layouts_apart() -> None:
    sd = {
        **layer("float8_e4m3fn", "f"),
        **layer("int8_convrot", "i"),
        **layer("nvfp4", "n"),
        **layer("mxfp8", "m"),
        "p.weight": torch.zeros(4, 4, dtype=torch.bfloat16),
        "e.weight": torch.zeros(4, 4, dtype=torch.float8_e5m2),  # plain fp8, no scale
    }
    names = {torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.float8_e8m0fnu: "F8_E8M0"}
    names |= {torch.int8: "I8", torch.uint8: "U8", torch.float32: "F32", torch.bfloat16: "BF16"}
    header = {k: TensorInfo(tuple(v.shape), names[v.dtype]) for k, v in sd.items()}
    expected = {
        "f.weight": "fp8",
        "i.weight": "int8",
        "n.weight": "nvfp4",
        "m.weight": "mxfp8",
        "e.weight": "fp8",
    }
    assert header_formats(header) == expected
