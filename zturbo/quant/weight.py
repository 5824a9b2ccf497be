"""`QuantWeight`: what every quantized weight format provides, so `QuantLinear` and the loaders need none.

A format is one frozen dataclass deriving from `QuantWeight`. Its fields are its stored tensors and its
static settings (a GGUF type, a rotation's group size, a flag); three class attributes say how each
tensor relates to the weight's rows, which is all the row operations below need:

- `ROWS`: tensors whose leading dimension runs along the weight's rows (the packed values, block
  scales); a row range of the weight is that row range of each;
- `SCALES`: fp32 scales stored per tensor (`()`) or per row (`(rows, 1)`); a per-tensor scale stays
  whole when rows are taken and becomes one value per row when weights are stacked, which multiplies
  identically;
- `SHARED`: optional tensors that apply to the whole input side (a static activation scale, a
  per-input-feature pre-scale); kept whole by row ranges, and weights stack only when theirs are equal.

Every other field is static: weights stack only when their static fields (and stored dtypes) agree.

What a format implements: `shape` (a field or a property: the logical `(out, in)` shape), `label`,
`expand(dtype)` (plain torch on the tensors' own device, float32 arithmetic, one rounding to `dtype`;
`zturbo.quant.linear` compiles it on CUDA), and optionally `expand_key` (weights sharing a key share one
compiled dequantizer), `native_linear` + `native_linear_applies` (a matmul on the stored form, such as
fp8 `_scaled_mm`), `compute_note` (one log line on how it computes), `can_split_rows` (GGUF: blocks must
not straddle rows). Row ranges (`rows`, `chunk`), stacking (`stack`), `to`, `nbytes`, the buffer-safe
stored form (`stored`, `stored_dtypes`, `static`) and its cheap inverse (`trusted`) come from here.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor

W = TypeVar("W", bound="QuantWeight")

# Integer dtypes of the same width: buffers are stored as these so `module.to(torch.bfloat16)`, which casts
# every floating buffer, can neither inflate fp8 bytes nor round fp32 scales.
_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CAPABILITY: dict[int, tuple[int, int]] = {}  # CUDA device index -> compute capability, asked once


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of a CUDA device, asked of the driver once per device (not per layer call)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return _CAPABILITY[index]


@dataclasses.dataclass(frozen=True, eq=False)
class QuantWeight(ABC):
    """A quantized weight in its stored form (see the module docstring for the contract)."""

    ROWS: ClassVar[tuple[str, ...]] = ()
    SCALES: ClassVar[tuple[str, ...]] = ()
    SHARED: ClassVar[tuple[str, ...]] = ()

    if TYPE_CHECKING:  # declared for the type checker only: a base field or property would clash

        @property
        def shape(self) -> torch.Size:
            """The logical (out, in) shape; each format has it as a dataclass field or a property."""
            raise NotImplementedError

    # ---------------------------------------------------------------- what a format implements

    @property
    @abstractmethod
    def label(self) -> str:
        """Short name of the stored type (`Q4_K`, `float8_e4m3fn`, `int8`, `nvfp4`), for messages and repr."""

    @abstractmethod
    def expand(self, dtype: torch.dtype) -> Tensor:
        """The weight in `dtype` on the tensors' device: plain torch, float32 arithmetic, one rounding."""

    @property
    def expand_key(self) -> Hashable:
        """Identity of the compiled dequantizer this weight uses; weights with equal keys must expand
        identically from equal tensors and static fields (which are passed to it, not baked in)."""
        return self.label

    def native_linear_applies(self, x: Tensor, compute_dtype: torch.dtype) -> bool:
        """Whether `native_linear` may compute `x @ W.T` here (static: device, shapes, dtypes)."""
        return False

    def native_linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """`F.linear(x, W, bias)` computed on the stored form (only called where it applies)."""
        raise NotImplementedError(f"{self.label} weights have no native matmul")

    def compute_note(self, native: bool) -> str | None:
        """One line for the log saying how layers of this type compute (None: nothing worth saying)."""
        return None

    def can_split_rows(self) -> bool:
        """Whether row ranges of the stored tensors are row ranges of the weight."""
        rows = self.shape[0]
        return all(getattr(self, name).numel() % max(rows, 1) == 0 for name in self.ROWS)

    # ---------------------------------------------------------------- stored tensors

    @classmethod
    def tensor_fields(cls) -> tuple[str, ...]:
        return (*cls.ROWS, *cls.SCALES, *cls.SHARED)

    @classmethod
    def static_fields(cls) -> tuple[str, ...]:
        return _static_fields(cls)

    def tensors(self) -> dict[str, Tensor | None]:
        return {name: getattr(self, name) for name in self.tensor_fields()}

    def static(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.static_fields()}

    def stored(self) -> dict[str, Tensor | None]:
        """The tensors as module buffers hold them: floating ones viewed as integers of the same width."""
        return {name: None if t is None else _as_int(t) for name, t in self.tensors().items()}

    def stored_dtypes(self) -> dict[str, torch.dtype | None]:
        return {name: None if t is None else t.dtype for name, t in self.tensors().items()}

    @classmethod
    def trusted(cls: type[W], fields: dict[str, Any]) -> W:
        """A weight from the fields of one that was validated already (skips `__post_init__`).

        `QuantLinear` rebuilds its weight from its buffers at every call; this keeps that to a few
        attribute stores (and traceable by torch.compile).
        """
        weight = object.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(weight, name, value)
        return weight

    @property
    def device(self) -> torch.device:
        return getattr(self, self.ROWS[0]).device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values() if t is not None)

    def to(self: W, device: torch.device | str, non_blocking: bool = False) -> W:
        moved = {
            name: None if t is None else t.to(device, non_blocking=non_blocking)
            for name, t in self.tensors().items()
        }
        return dataclasses.replace(self, **moved)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """`expand`, eagerly, where the tensors are."""
        return self.expand(dtype)

    # ---------------------------------------------------------------- rows

    def _with_rows(self: W, tensors: dict[str, Tensor | None], rows: int) -> W:
        """The same weight with new row tensors holding `rows` rows (GGUF also updates its shape)."""
        return dataclasses.replace(self, **tensors)

    def _row_view(self, name: str) -> Tensor:
        t = getattr(self, name)
        return t.reshape(self.shape[0], -1) if t.ndim < 2 or t.shape[0] != self.shape[0] else t

    def rows(self: W, start: int, stop: int) -> W:
        """Rows `start:stop` of the weight, as views of the stored tensors."""
        new: dict[str, Tensor | None] = {name: self._row_view(name)[start:stop] for name in self.ROWS}
        for name in self.SCALES:
            scale = getattr(self, name)
            new[name] = scale if scale is None or scale.ndim == 0 else scale[start:stop]
        return self._with_rows(new, stop - start)

    def chunk(self: W, parts: int, dim: int = 0) -> list[W]:
        """Split whole rows into `parts` equal views (a fused qkv into q, k, v) without copying."""
        rows = self.shape[0]
        if dim != 0 or parts < 1 or rows % parts or not self.can_split_rows():
            raise ValueError(f"cannot split {self.label} {tuple(self.shape)} into {parts} along dim {dim}")
        step = rows // parts
        return [self.rows(i * step, (i + 1) * step) for i in range(parts)]

    @classmethod
    def stack(cls: type[W], parts: Sequence[QuantWeight]) -> W | None:
        """One weight whose rows are the parts' rows in order, or None when that would change any output.

        None when a part is of another type, differs in a static field, a stored dtype, the input width
        or a shared tensor, sits on another device, or cannot be split into rows. The result holds a
        copy of the parts' rows (per-tensor scales become per-row ones).
        """
        parts = list(parts)
        if not parts or any(type(p) is not cls for p in parts):
            return None
        first = parts[0]
        if not all(_stackable_with(first, p) for p in parts):
            return None
        new: dict[str, Tensor | None] = {
            name: torch.cat([p._row_view(name) for p in parts]) for name in cls.ROWS
        }
        for name in cls.SCALES:
            if getattr(first, name) is not None:
                new[name] = torch.cat([_per_row(getattr(p, name), p.shape[0]) for p in parts])
        return first._with_rows(new, sum(p.shape[0] for p in parts))  # type: ignore[return-value]


@functools.cache
def _static_fields(cls: type[QuantWeight]) -> tuple[str, ...]:
    tensors = set(cls.tensor_fields())
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in tensors)


def _stackable_with(first: QuantWeight, part: QuantWeight) -> bool:
    static = [name for name in first.static_fields() if name != "shape"]
    if any(getattr(part, name) != getattr(first, name) for name in static):
        return False
    if tuple(part.shape[1:]) != tuple(first.shape[1:]) or not part.can_split_rows():
        return False
    if part.stored_dtypes() != first.stored_dtypes():
        return False
    if any(t is not None and t.device != first.device for t in part.tensors().values()):
        return False
    for name in first.SHARED:
        a, b = getattr(first, name), getattr(part, name)
        if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
            return False  # one activation-side tensor per GEMM: only identical ones can be shared
    return True


def row_or_tensor_scale(scale: Tensor, shape: torch.Size) -> Tensor:
    """An fp32 scale as `()` (per tensor) or `(rows, 1, ...)` (per row); no work when it is one already."""
    if not len(shape):
        per_row: tuple[int, ...] = ()
    else:
        per_row = (shape[0], *([1] * (len(shape) - 1)))
    if scale.dtype == torch.float32 and (scale.ndim == 0 or tuple(scale.shape) == per_row):
        return scale
    scale = scale.float()
    if scale.numel() == 1:
        return scale.reshape(())
    if per_row and scale.numel() == per_row[0]:
        return scale.reshape(per_row)
    raise ValueError(f"scale of {scale.numel()} values fits neither per tensor nor per row")


def _per_row(scale: Tensor, rows: int) -> Tensor:
    """A scale as one value per row, `(rows, 1)`."""
    if scale.numel() == 1:
        return scale.reshape(1, 1).expand(rows, 1)
    return scale.reshape(rows, 1)


def _as_int(t: Tensor) -> Tensor:
    return t.view(_SAME_WIDTH_INT[t.element_size()]) if t.is_floating_point() else t
