"""ComfyUI fp8 layouts -> Fp8Weight, every marker and scale key consumed.

"Within fp8 rounding": e4m3 keeps 3 mantissa bits, so a normal value rounds to within 2**-4 of itself
(relative); e5m2 keeps 2 bits (2**-3). Below the smallest normal the step is absolute (2**-9 for e4m3,
2**-16 for e5m2), in units of the scale. Dequantization itself (`data.float() * scale`) is exact.
"""

from __future__ import annotations

import json

import pytest
import torch

from zturbo.checkpoints.fp8 import split_fp8_state_dict
from zturbo.errors import ModelFileError
from zturbo.quant.fp8 import Fp8Weight

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
REL = {E4M3: 2.0**-4, E5M2: 2.0**-3}
SUBNORMAL_STEP = {E4M3: 2.0**-9, E5M2: 2.0**-16}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quantize(w: torch.Tensor, scale: float, dtype: torch.dtype = E4M3) -> torch.Tensor:
    return (w / scale).to(dtype)


def assert_within_fp8_rounding(got: torch.Tensor, w: torch.Tensor, scale: float, dtype: torch.dtype) -> None:
    bound = REL[dtype] * w.abs() + SUBNORMAL_STEP[dtype] * scale
    assert bool(((got - w).abs() <= bound).all())


def comfy_quant(conf: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


@pytest.mark.parametrize("dtype", [E4M3, E5M2], ids=str)
def test_plain_fp8_weights(dtype: torch.dtype) -> None:
    w = torch.randn(16, 32, generator=gen(0))
    sd = {"a.weight": w.to(dtype), "a.bias": torch.randn(16), "norm.weight": torch.ones(32)}
    plain, fp8 = split_fp8_state_dict(sd)

    assert set(plain) == {"a.bias", "norm.weight"} and set(fp8) == {"a.weight"}
    assert fp8["a.weight"].scale.item() == 1.0
    got = fp8["a.weight"].dequantize(torch.float32)
    assert torch.equal(got, w.to(dtype).float())
    assert_within_fp8_rounding(got, w, 1.0, dtype)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_legacy_scaled_fp8(prefix: str) -> None:
    w1, w2 = torch.randn(16, 32, generator=gen(1)) * 3, torch.randn(8, 16, generator=gen(2)) / 50
    s1, s2 = w1.abs().max().item() / 448, w2.abs().max().item() / 448
    sd = {
        f"{prefix}scaled_fp8": torch.empty(0, dtype=E4M3),
        f"{prefix}l1.weight": quantize(w1, s1),
        f"{prefix}l1.scale_weight": torch.tensor(s1),
        f"{prefix}l1.scale_input": torch.tensor(1.0),
        f"{prefix}l2.weight": quantize(w2, s2),
        f"{prefix}l2.scale_weight": torch.tensor(s2),
        f"{prefix}l2.scale_input": torch.tensor(0.5),
        f"{prefix}l2.bias": torch.zeros(8),
    }
    plain, fp8 = split_fp8_state_dict(sd)

    assert set(plain) == {f"{prefix}l2.bias"}
    assert set(fp8) == {f"{prefix}l1.weight", f"{prefix}l2.weight"}
    first, second = fp8[f"{prefix}l1.weight"], fp8[f"{prefix}l2.weight"]
    assert first.input_scale is None and second.input_scale.item() == 0.5  # a scale of 1 means none
    for weight, w, s in ((first, w1, s1), (second, w2, s2)):
        got = weight.dequantize(torch.float32)
        assert torch.equal(got, weight.data.float() * torch.tensor(s, dtype=torch.float32))
        assert_within_fp8_rounding(got, w, s, E4M3)
        assert not weight.full_precision_mm


def test_legacy_marker_of_two_elements_asks_for_full_precision_and_folds_plain_weights() -> None:
    w = torch.randn(4, 8, generator=gen(3))
    sd = {
        "scaled_fp8": torch.zeros(2, dtype=E4M3),
        "q.weight": w.to(E4M3),
        "q.scale_weight": torch.tensor(1.0),
        "n.weight": torch.ones(4, dtype=torch.bfloat16),
        "n.scale_weight": torch.tensor(2.0),
    }
    plain, fp8 = split_fp8_state_dict(sd)
    assert fp8["q.weight"].full_precision_mm
    assert set(plain) == {"n.weight"} and torch.equal(
        plain["n.weight"], torch.full((4,), 2.0, dtype=torch.bfloat16)
    )


def test_comfy_quant_layers() -> None:
    w = torch.randn(16, 32, generator=gen(4))
    s = w.abs().max().item() / 448
    w5 = torch.randn(8, 32, generator=gen(5)) / 100
    sd = {
        "a.weight": quantize(w, s),
        "a.weight_scale": torch.tensor(s),
        "a.input_scale": torch.tensor(0.25),
        "a.comfy_quant": comfy_quant({"format": "float8_e4m3fn", "full_precision_matrix_mult": True}),
        "b.weight": quantize(w5, 0.01, E5M2),
        "b.weight_scale": torch.tensor(0.01),
        "b.comfy_quant": comfy_quant({"format": "float8_e5m2"}),
        "c.weight": torch.randn(4, 4, dtype=torch.bfloat16),  # a layer left unquantized
    }
    plain, fp8 = split_fp8_state_dict(sd)

    assert set(plain) == {"c.weight"} and set(fp8) == {"a.weight", "b.weight"}
    a, b = fp8["a.weight"], fp8["b.weight"]
    assert a.full_precision_mm and a.input_scale.item() == 0.25 and b.input_scale is None
    assert_within_fp8_rounding(a.dequantize(torch.float32), w, s, E4M3)
    assert_within_fp8_rounding(b.dequantize(torch.float32), w5, 0.01, E5M2)
    assert torch.equal(a.dequantize(torch.bfloat16), (a.data.float() * s).to(torch.bfloat16))


def test_quantization_metadata_header() -> None:
    w = torch.randn(8, 16, generator=gen(6))
    sd = {"m.weight": quantize(w, 0.01), "m.weight_scale": torch.tensor(0.01)}
    metadata = {"_quantization_metadata": json.dumps({"layers": {"m": {"format": "float8_e4m3fn"}}})}
    plain, fp8 = split_fp8_state_dict(sd, metadata=metadata)
    assert plain == {} and fp8["m.weight"].scale.item() == pytest.approx(0.01)


def test_unsupported_comfy_quant_format_is_named() -> None:
    sd = {
        "a.weight": torch.zeros(4, 8, dtype=torch.int8),
        "a.comfy_quant": comfy_quant({"format": "awq_w4a16"}),
    }
    with pytest.raises(ModelFileError, match=r"z\.safetensors.*'awq_w4a16'.*float8_e4m3fn.*nvfp4"):
        split_fp8_state_dict(sd, source="z.safetensors")


def test_inconsistent_layers_raise() -> None:
    with pytest.raises(ModelFileError, match="a.weight is missing"):
        split_fp8_state_dict({"a.comfy_quant": comfy_quant({"format": "float8_e4m3fn"})})
    with pytest.raises(ModelFileError, match="comfy_quant says float8_e4m3fn"):
        bad = {"a.weight": torch.zeros(2, 2), "a.comfy_quant": comfy_quant({"format": "float8_e4m3fn"})}
        split_fp8_state_dict(bad)


def test_per_row_scale_shapes() -> None:
    data = torch.randn(6, 8).to(E4M3)
    assert Fp8Weight(data, torch.ones(6)).scale.shape == (6, 1)
    assert Fp8Weight(data, torch.ones(6, 1)).scale.shape == (6, 1)
    assert Fp8Weight(data, torch.tensor([2.0])).scale.shape == ()
    with pytest.raises(ValueError):
        Fp8Weight(data, torch.ones(5))
