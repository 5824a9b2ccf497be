"""The `QuantWeight` protocol: a format defined here, in one class, works everywhere a format must.

`Halves` (int16 values, a per-row or per-tensor fp32 scale, an optional shared input scale and a static
flag) is no format zturbo reads; that `QuantLinear`, stacking, row splits, chunked dequantization at load,
dtype casts and torch.compile all work with it unchanged is what "a new format is one class" means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zturbo.quant import linear as quant
from zturbo.quant.linear import QuantLinear, load_state_dict_with_quant
from zturbo.quant.weight import QuantWeight, row_or_tensor_scale


@dataclass(frozen=True, eq=False)
class Halves(QuantWeight):
    data: Tensor  # int16 (out, in)
    scale: Tensor  # fp32 () or (out, 1)
    input_scale: Tensor | None = None
    flag: bool = False

    ROWS: ClassVar[tuple[str, ...]] = ("data",)
    SCALES: ClassVar[tuple[str, ...]] = ("scale",)
    SHARED: ClassVar[tuple[str, ...]] = ("input_scale",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", row_or_tensor_scale(self.scale, self.data.shape))

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def label(self) -> str:
        return "halves"

    def expand(self, dtype: torch.dtype) -> Tensor:
        return (self.data.float() * self.scale).to(dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def halves(rows: int, cols: int = 32, *, per_row: bool = True, seed: int = 0, **kw) -> Halves:
    data = torch.randint(-3000, 3000, (rows, cols), generator=gen(seed), dtype=torch.int16)
    scale = torch.rand(rows, 1, generator=gen(seed + 1)) if per_row else torch.tensor(0.01 * (seed + 1))
    return Halves(data, scale, **kw)


def reference(weight: Halves) -> Tensor:
    """Independent expansion: int16 → float32 times the scale, broadcast by hand."""
    scale = weight.scale.reshape(-1, 1) if weight.scale.numel() > 1 else weight.scale.reshape(1, 1)
    return weight.data.to(torch.float32) * scale


def test_quant_linear_runs_a_new_format() -> None:
    weight, bias = halves(16), torch.randn(16, generator=gen(5))
    layer = QuantLinear(weight, bias, compute_dtype=torch.float32)
    x = torch.randn(3, 32, generator=gen(6))
    assert torch.equal(layer.weight, reference(weight))
    assert torch.equal(layer(x), F.linear(x, reference(weight), bias))
    assert "weight=halves" in repr(layer)
    assert {name for name, _ in layer.named_buffers()} == {"qweight", "scale", "bias"}
    layer.to(torch.bfloat16)  # floating buffers are cast; the stored form is kept as integers
    assert layer.scale.dtype == torch.int32 and torch.equal(layer.weight, reference(weight))


@pytest.mark.parametrize("per_row", [True, False])
def test_stack_chunk_and_rows_of_a_new_format(per_row: bool) -> None:
    parts = [halves(rows, per_row=per_row, seed=i) for i, rows in enumerate((8, 4, 4))]
    layers = [QuantLinear(p, compute_dtype=torch.float32) for p in parts]
    fused = QuantLinear.concatenated(layers)
    assert fused is not None and fused.quantized().scale.shape == (16, 1)
    x = torch.randn(2, 32, generator=gen(7))
    assert torch.equal(fused(x), torch.cat([layer(x) for layer in layers], dim=-1))
    stacked = fused.quantized()
    for part, back in zip(parts, [stacked.rows(0, 8), *stacked.rows(8, 16).chunk(2)], strict=True):
        assert torch.equal(back.expand(torch.float32), reference(part))
    with pytest.raises(ValueError, match="cannot split halves"):
        stacked.chunk(3)


def test_what_prevents_stacking() -> None:
    a = halves(4)
    assert Halves.stack([a, halves(4, flag=True)]) is None  # static field differs
    assert Halves.stack([a, halves(4, cols=16)]) is None  # input width differs
    with_input = halves(4, input_scale=torch.tensor(0.5))
    assert Halves.stack([with_input, a]) is None  # a shared tensor on one part only
    assert Halves.stack([with_input, halves(4, input_scale=torch.tensor(0.25))]) is None
    same = Halves.stack([with_input, halves(4, seed=3, input_scale=torch.tensor(0.5))])
    assert same is not None and same.input_scale == 0.5


def test_loader_dequantizes_a_new_format_that_no_linear_takes(monkeypatch) -> None:
    monkeypatch.setattr(quant, "_LOAD_CHUNK_ELEMENTS", 64)  # two rows a chunk
    with torch.device("meta"):
        model = nn.Sequential(nn.Embedding(10, 32), nn.Linear(32, 8))
    embedding, linear = halves(10, seed=1), halves(8, seed=2)
    load_state_dict_with_quant(
        model,
        {"0.weight": embedding, "1.weight": linear, "1.bias": torch.zeros(8)},
        compute_dtype=torch.float32,
    )
    assert isinstance(model[1], QuantLinear) and torch.equal(model[0].weight, reference(embedding))


def test_a_new_format_traces_fullgraph() -> None:
    layer = QuantLinear(halves(16, input_scale=torch.tensor(1.0)), compute_dtype=torch.float32)
    x = torch.randn(4, 32, generator=gen(8))
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), layer(x))


def test_moves_and_sizes() -> None:
    weight = halves(8, input_scale=torch.tensor(0.5))
    assert weight.nbytes == 8 * 32 * 2 + 8 * 4 + 4
    moved = weight.to("cpu")
    assert moved is not weight and moved.flag == weight.flag and torch.equal(moved.data, weight.data)
