"""GGUF dequantization against the `gguf` package's numpy reference, in every supported type.

Tolerance: none. Our kernels do the reference's float32 operations in the same order, so on CPU eager
the results are bit-identical; `dequantize(..., bfloat16)` is that float32 result rounded once, so it
equals the reference cast to bfloat16 exactly too. (A fused compiled kernel could contract
`d * q - m` into an FMA and differ in the last float32 bit; on an H100, eager CUDA and inductor-compiled
kernels were measured bit-exact for every type, but only the CPU is promised.)
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.gguf import read_gguf
from zturbo.quant.gguf import GGUFWeight, dequantize, dequantize_raw

# Byte offsets of the fp16 fields (d, dmin/m) in each block: random bytes there could be inf/NaN.
F16_FIELDS = {
    Q.Q8_0: (0,),
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q5_1: (0, 2),
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
}
QUANT_TYPES = list(F16_FIELDS)
PACKAGE_CAN_QUANTIZE = {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1}


def random_blocks(qtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Valid blocks for any type: random bits everywhere, small finite fp16 scales."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(shape[0], shape[1] // block_size * type_size), dtype=np.uint8)
    blocks = raw.reshape(-1, type_size)
    for offset in F16_FIELDS[qtype]:
        scales = (rng.standard_normal((blocks.shape[0], 1)) * 0.01).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8)
    return raw


def quantized_bytes(qtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    if qtype in PACKAGE_CAN_QUANTIZE:
        return gguf.quants.quantize(rng.standard_normal(shape).astype(np.float32), qtype)
    return random_blocks(qtype, shape, rng)


def odd_shape(qtype: Q) -> tuple[int, int]:
    """Non-square, rows not a power of two, several blocks a row."""
    return (5, 3 * GGML_QUANT_SIZES[qtype][0])


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, Q | None]], arch: str = "test") -> Path:
    writer = gguf.GGUFWriter(path, arch)
    for name, (array, qtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_written_file_dequantizes_like_reference(tmp_path: Path, qtype: Q) -> None:
    rng = np.random.default_rng(int(qtype))
    shape = odd_shape(qtype)
    raw = quantized_bytes(qtype, shape, rng)
    loaded = read_gguf(write_gguf(tmp_path / "q.gguf", {"w": (raw, qtype)})).tensors["w"]

    assert isinstance(loaded, GGUFWeight)
    assert loaded.qtype == qtype and loaded.shape == torch.Size(shape)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, qtype))
    assert torch.equal(dequantize(loaded, torch.float32), expected)
    assert torch.equal(loaded.dequantize(torch.bfloat16), expected.to(torch.bfloat16))


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_random_bit_patterns_are_bit_exact(qtype: Q) -> None:
    rng = np.random.default_rng(100 + int(qtype))
    shape = (64, 2 * GGML_QUANT_SIZES[qtype][0])
    raw = random_blocks(qtype, shape, rng)
    got = dequantize_raw(torch.from_numpy(raw), qtype, torch.Size(shape), torch.float32)
    assert torch.equal(got, torch.from_numpy(gguf.quants.dequantize(raw, qtype)))


def test_plain_types_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((2, 3, 5)).astype(np.float32)
    f16 = rng.standard_normal((7, 3)).astype(np.float16)
    bf16 = torch.randn(3, 6, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    bf16_bytes = bf16.view(torch.uint8).numpy()
    path = write_gguf(tmp_path / "p.gguf", {"a": (f32, None), "b": (f16, None), "c": (bf16_bytes, Q.BF16)})
    tensors = read_gguf(path).tensors

    assert tensors["a"].dtype == torch.float32 and torch.equal(tensors["a"], torch.from_numpy(f32))
    assert tensors["b"].dtype == torch.float16 and torch.equal(tensors["b"], torch.from_numpy(f16))
    assert tensors["c"].dtype == torch.bfloat16 and torch.equal(tensors["c"], bf16)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_plain_types_dequantize_from_bytes(qtype: Q) -> None:
    values = torch.randn(4, 8).to({Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[qtype])
    weight = GGUFWeight(values.view(torch.uint8), qtype, values.shape)
    assert torch.equal(dequantize(weight, values.dtype), values)


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_dequantize_traces_without_graph_breaks(qtype: Q) -> None:
    """`fullgraph=True` fails on any graph break or data-dependent branch."""
    shape = torch.Size((4, GGML_QUANT_SIZES[qtype][0]))
    data = torch.from_numpy(random_blocks(qtype, tuple(shape), np.random.default_rng(1)))
    torch._dynamo.reset()  # one compiled function per type; don't hit the recompile limit across cases
    compiled = torch.compile(dequantize_raw, fullgraph=True, backend="aot_eager")
    expected = dequantize_raw(data, qtype, shape, torch.bfloat16)
    assert torch.equal(compiled(data, qtype, shape, torch.bfloat16), expected)
