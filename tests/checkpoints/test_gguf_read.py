"""read_gguf: metadata, shapes, reshaped tensors, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.gguf import read_gguf, strip_dit_prefix
from zturbo.errors import ModelFileError
from zturbo.quant.gguf import GGUFWeight


def write(path: Path, tensors: dict[str, tuple[np.ndarray, Q | None]], **arrays: list[int]) -> Path:
    writer = gguf.GGUFWriter(path, "qwen3")
    writer.add_block_count(2)
    for key, value in arrays.items():
        writer.add_array(key.replace("__", "."), value)
    for name, (array, qtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def q8(shape: tuple[int, ...]) -> np.ndarray:
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return gguf.quants.quantize(data, Q.Q8_0)


def test_metadata_and_logical_shapes(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf", {"w": (q8((96, 64)), Q.Q8_0), "n": (np.ones(96, np.float32), None)})
    f = read_gguf(path)

    assert f.architecture == "qwen3" and f.metadata["qwen3.block_count"] == 2
    assert isinstance(f.tensors["w"], GGUFWeight) and f.tensors["w"].shape == (96, 64)
    assert f.tensors["w"].nbytes == 96 * 2 * 34
    assert f.tensors["n"].shape == (96,)


def test_orig_shape_metadata_reshapes(tmp_path: Path) -> None:
    """city96's converter flattens awkward tensors to rows of 256 and records the true shape."""
    weight = q8((6, 256))
    path = write(tmp_path / "r.gguf", {"conv": (weight, Q.Q8_0)}, comfy__gguf__orig_shape__conv=[4, 3, 8, 16])
    loaded = read_gguf(path).tensors["conv"]
    assert loaded.shape == (4, 3, 8, 16)
    expected = torch.from_numpy(gguf.quants.dequantize(weight, Q.Q8_0)).reshape(4, 3, 8, 16)
    assert torch.equal(loaded.dequantize(), expected)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.gguf", {"w": (q8((64, 64)), Q.Q8_0)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError, match="cut.gguf"):
        read_gguf(path)


def test_header_only_fragment_and_non_gguf(tmp_path: Path) -> None:
    path = write(tmp_path / "frag.gguf", {"w": (q8((64, 64)), Q.Q8_0)})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelFileError, match="frag.gguf"):
        read_gguf(path)
    other = tmp_path / "x.safetensors"
    other.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelFileError, match="x.safetensors"):
        read_gguf(other)
    with pytest.raises(ModelFileError, match="absent.gguf"):
        read_gguf(tmp_path / "absent.gguf")


def test_unsupported_type_is_named_with_supported_list(tmp_path: Path) -> None:
    raw = np.random.default_rng(0).integers(0, 256, size=(2, 18 * 8), dtype=np.uint8)  # IQ4_NL: 18 B / 32
    path = write(tmp_path / "iq.gguf", {"w": (raw, Q.IQ4_NL)})
    with pytest.raises(ModelFileError, match=r"IQ4_NL.*supported:.*Q4_K"):
        read_gguf(path)


def test_tensors_are_zero_copy_and_file_stays_untouched(tmp_path: Path) -> None:
    path = write(tmp_path / "z.gguf", {"n": (np.arange(8, dtype=np.float32), None)})
    before = path.read_bytes()
    tensor = read_gguf(path).tensors["n"]
    tensor.add_(1)  # copy-on-write map: allowed, and private
    assert path.read_bytes() == before


def test_strip_dit_prefix() -> None:
    assert strip_dit_prefix("model.diffusion_model.layers.0.attention.qkv.weight") == (
        "layers.0.attention.qkv.weight"
    )
    assert strip_dit_prefix("cap_embedder.1.weight") == "cap_embedder.1.weight"
