"""Open weight files safely and lazily.

Only safetensors and GGUF are ever read: both are plain data. Pickle-based files (``.ckpt``, ``.pt``,
``.pth``, ``.bin``) can execute code when loaded, so they are refused by extension *and* by their first
bytes, whatever the file is called. safetensors tensors are memory-mapped: reading a 12 GB file costs
page cache, not a second copy in RAM.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zturbo.errors import ModelFileError

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container (a pickle inside)
_GGUF_MAGIC = b"GGUF"

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor: enough to detect a model without reading weights."""

    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name ("BF16", ...) or GGUF type name ("Q4_K", ...)


@dataclass
class Checkpoint:
    """A weight file's header (names, shapes, dtypes, metadata); tensors are read on demand."""

    path: Path
    format: str  # "safetensors" | "gguf"
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    key_prefix: str = ""  # a part of a bundled checkpoint: the file's names start with this

    def part(self, prefix: str) -> Checkpoint:
        """The tensors whose names start with `prefix`, named without it (one component of a
        single-file checkpoint); reading it reads only those tensors."""
        tensors = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        return Checkpoint(self.path, self.format, tensors, self.metadata, self.key_prefix + prefix)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key].shape

    def dtype_summary(self) -> str:
        """The most common dtype by element count, e.g. "BF16" (what `zturbo models` shows)."""
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            n = 1
            for d in info.shape:
                n *= d
            counts[info.dtype] = counts.get(info.dtype, 0) + n
        return max(counts, key=counts.__getitem__) if counts else "?"

    def load(self) -> dict[str, object]:
        """All tensors, memory-mapped (GGUF quantized tensors stay quantized)."""
        return dict(self.iter_tensors())

    def iter_tensors(self) -> Iterator[tuple[str, object]]:
        if self.format == "gguf":
            from zturbo.checkpoints.gguf import read_gguf

            for key, value in read_gguf(self.path).tensors.items():
                if key.startswith(self.key_prefix):
                    yield key[len(self.key_prefix) :], value
            return
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    if key.startswith(self.key_prefix):
                        yield key[len(self.key_prefix) :], f.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(
                self.path, f"could not read tensors ({exc}); the file may be corrupt"
            ) from exc


def refuse_pickle(path: Path) -> None:
    """Raise if the file is (or looks like) a pickle: we never unpickle."""
    hint = (
        "zturbo never loads pickle files (.ckpt/.pt/.pth/.bin) because loading them can run arbitrary code. "
        "Use the .safetensors or .gguf version of this model."
    )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(path, f"is a pickle-based file. {hint}")
    with path.open("rb") as f:
        head = f.read(9)
    if head.startswith(_ZIP_MAGIC) or (head[:1] == b"\x80" and not _looks_like_safetensors(path, head)):
        raise ModelFileError(path, f"contains a pickle (torch.save format), whatever its name says. {hint}")


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    """A safetensors file starts with its header's length (u64, little-endian) and then "{": a length whose
    low byte is 0x80 must not be taken for a pickle's protocol opcode."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return header_len <= path.stat().st_size - 8


def open_checkpoint(path: Path | str) -> Checkpoint:
    """Read a weight file's header; raise ModelFileError with a readable reason if it is not usable."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    refuse_pickle(path)
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] == _GGUF_MAGIC:
        return _open_gguf(path)
    return _open_safetensors(path)


def _open_safetensors(path: Path) -> Checkpoint:
    size = path.stat().st_size
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise ModelFileError(path, f"is too small to be a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(size - 8, 100_000_000):
            raise ModelFileError(
                path, "is not a safetensors or GGUF file (no valid header); expected model weights"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(path, f"has a corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelFileError(path, "has a corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (_start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(path, f"has a corrupt header entry for {name!r}") from exc
        if end > data_size:
            raise ModelFileError(
                path,
                f"is truncated: tensor {name!r} ends at byte {end} but the file holds only {data_size} bytes "
                "of data. Download it again.",
            )
        tensors[name] = TensorInfo(shape=shape, dtype=dtype)
    if not tensors:
        raise ModelFileError(path, "holds no tensors")
    return Checkpoint(path=path, format="safetensors", tensors=tensors, metadata=dict(metadata))


def _open_gguf(path: Path) -> Checkpoint:
    """GGUF headers are read through a memory map: no tensor data is touched."""
    from zturbo.checkpoints.gguf import read_gguf
    from zturbo.quant.gguf import GGUFWeight

    gguf = read_gguf(path)
    tensors = {
        name: TensorInfo(
            tuple(t.shape), t.qtype.name if isinstance(t, GGUFWeight) else _safetensors_name(t.dtype)
        )
        for name, t in gguf.tensors.items()
    }
    metadata = {k: str(v) for k, v in gguf.metadata.items() if isinstance(v, (str, int, float))}
    return Checkpoint(path=path, format="gguf", tensors=tensors, metadata=metadata)


def _safetensors_name(dtype: torch.dtype) -> str:
    return next((name for name, d in _SAFETENSORS_DTYPES.items() if d == dtype), str(dtype))


def torch_dtype_of(name: str) -> torch.dtype | None:
    """safetensors dtype name → torch dtype (None for GGUF quant types)."""
    return _SAFETENSORS_DTYPES.get(name)
