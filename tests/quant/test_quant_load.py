"""load_state_dict_with_quant on a tiny meta-built model."""

from __future__ import annotations

import json

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from torch import nn

from zturbo.checkpoints.fp8 import split_fp8_state_dict
from zturbo.errors import ModelFileError
from zturbo.quant import linear as quant
from zturbo.quant.fp8 import quantize_to_fp8
from zturbo.quant.gguf import GGUFWeight
from zturbo.quant.linear import QuantLinear, load_state_dict_with_quant


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(device: str = "meta") -> nn.Sequential:
    with torch.device(device):
        return nn.Sequential(
            nn.Embedding(10, 64), nn.Linear(64, 48), nn.LayerNorm(48), nn.GELU(), nn.Linear(48, 32)
        )


def gguf_weight(qtype: Q, shape: tuple[int, int], seed: int) -> GGUFWeight:
    w = torch.randn(*shape, generator=gen(seed)).numpy()
    return GGUFWeight(torch.from_numpy(gguf.quants.quantize(w, qtype)), qtype, torch.Size(shape))


def quantized_state() -> dict:
    return {
        "0.weight": gguf_weight(Q.Q8_0, (10, 64), 0),  # an Embedding: dequantized at load
        "1.weight": gguf_weight(Q.Q4_1, (48, 64), 1),
        "1.bias": torch.randn(48, generator=gen(2)),
        "2.weight": torch.rand(48, generator=gen(3)) + 0.5,
        "2.bias": torch.randn(48, generator=gen(4)),
        "4.weight": quantize_to_fp8(torch.randn(32, 48, generator=gen(5))),
        "4.bias": torch.randn(32, generator=gen(6)),
    }


def dequantized(state: dict) -> dict:
    return {k: v if isinstance(v, torch.Tensor) else v.dequantize(torch.float32) for k, v in state.items()}


def reference_output(state: dict, ids: torch.Tensor) -> torch.Tensor:
    model = build("cpu")
    model.load_state_dict(dequantized(state))
    return model(ids)


def test_same_outputs_as_dequantized_weights() -> None:
    state, ids = quantized_state(), torch.tensor([[1, 7, 3], [0, 9, 9]])
    model = build()
    load_state_dict_with_quant(model, state, compute_dtype=torch.float32)

    assert isinstance(model[1], QuantLinear) and isinstance(model[4], QuantLinear)
    assert isinstance(model[0], nn.Embedding) and model[0].weight.dtype == torch.float32
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert torch.equal(model(ids), reference_output(state, ids))


def test_comfy_fp8_file_end_to_end() -> None:
    w, s = torch.randn(48, 64, generator=gen(7)), 0.01
    raw = {
        "0.weight": torch.randn(10, 64, generator=gen(8)),
        "1.weight": (w / s).to(torch.float8_e4m3fn),
        "1.weight_scale": torch.tensor(s),
        "1.comfy_quant": torch.tensor(
            list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8
        ),
        "1.bias": torch.zeros(48),
        "2.weight": torch.ones(48),
        "2.bias": torch.zeros(48),
        "4.weight": torch.randn(32, 48, generator=gen(9)).to(torch.float8_e4m3fn),  # plain fp8
        "4.bias": torch.zeros(32),
    }
    plain, fp8 = split_fp8_state_dict(raw)
    state = {**plain, **fp8}
    model, ids = build(), torch.tensor([[2, 4]])
    load_state_dict_with_quant(model, state, compute_dtype=torch.float32)
    assert torch.equal(model(ids), reference_output(state, ids))


def test_chunked_dequantization_of_big_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quant, "_LOAD_CHUNK_ELEMENTS", 128)  # two rows at a time
    state = quantized_state()
    model = build()
    load_state_dict_with_quant(model, state, compute_dtype=torch.bfloat16)
    assert torch.equal(model[0].weight, state["0.weight"].dequantize(torch.bfloat16))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("2.bias"), r"missing keys \(1\): 2\.bias"),
        (lambda s: s.update({"5.weight": torch.zeros(1)}), r"unexpected keys \(1\): 5\.weight"),
        (lambda s: s.update({"2.weight": torch.ones(47)}), r"wrong shapes.*2\.weight \(47,\)"),
        (lambda s: s.update({"1.weight": gguf_weight(Q.Q8_0, (48, 96), 1)}), r"1\.weight \(48, 96\)"),
    ],
)
def test_bad_state_dicts_raise_before_touching_the_model(change, message: str) -> None:
    state = quantized_state()
    change(state)
    model = build()
    with pytest.raises(ModelFileError, match=message):
        load_state_dict_with_quant(model, state, compute_dtype=torch.float32, source="tiny.gguf")
    assert isinstance(model[1], nn.Linear) and model[1].weight.is_meta


def test_error_lists_only_a_few_keys() -> None:
    with pytest.raises(ModelFileError, match=r"tiny\.gguf.*missing keys \(7\): .*, \.\.\."):
        load_state_dict_with_quant(build(), {}, compute_dtype=torch.float32, source="tiny.gguf")
