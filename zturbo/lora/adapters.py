"""Adapters: one patch's tensors exactly as the file stores them, and the weight change they define.

Every adapter computes in float32 from its stored tensors. `delta()` is ΔW with the file's own scaling
(alpha/rank, LyCORIS's rules) but not the user's strength. `merged(weight, strength)` returns the patched
weight; for plain adapters that is `weight + ΔW·strength` (computed as ComfyUI does: the raw product times
`strength·scale`), and DoRA adapters renormalise against the base weight (see `Dora`).

Scaling rules (ComfyUI `comfy/weight_adapter/{lora,lokr,loha}.py`, LyCORIS, PEFT):
- LoRA: ΔW = up @ down · alpha / rank, rank = down.shape[0]; no alpha → scale 1 (PEFT's "alpha = rank").
- LoKr: ΔW = kron(w1, w2) · alpha / dim, where dim is the rank of the decomposed factor (w2 if w2 is
  decomposed, else w1); when both factors are full matrices LyCORIS applies no alpha scaling.
  A Tucker core `lokr_t2` rebuilds w2 = einsum("i j ..., j r, i p -> p r ...", t2, w2_b, w2_a).
- LoHa: ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / rank, rank = w1_b.shape[0]; Tucker cores t1/t2 as above.
- Full: ΔW = diff (ComfyUI's `.diff`, `.diff_b`, LyCORIS `w_norm`/`b_norm`), or a bias delta b·scale (PEFT
  `lora_B.bias`, scaled like its LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor

ROW = "row"
COLUMN = "column"
FP32_EPS = float(torch.finfo(torch.float32).eps)


def _f32(t: Tensor, device) -> Tensor:
    return t.to(device=device, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class Dora:
    """DoRA's magnitude vector and how it normalises.

    `axis` ROW: one magnitude per output row (PEFT's `lora_magnitude_vector` of shape (out,), LyCORIS with
    `wd_on_out`, `dora_scale` of shape (out, 1)): W' = m · (W + ΔW) / ‖W + ΔW‖_row.
    `axis` COLUMN: one per input column (LyCORIS's default, kohya; `dora_scale` of shape (1, in)):
    W' = m · (W + ΔW) / ‖W + ΔW‖_column.
    The norm is always the patched weight's, as trained (PEFT, LyCORIS, the DoRA paper). ComfyUI's current
    release divides the ROW case by the *base* weight's norm instead (its open PR #15458 fixes that); for
    COLUMN files, the common case, zturbo and ComfyUI agree. `eps` is added to the norm: fp32 eps for
    `dora_scale` files (ComfyUI, LyCORIS), 0 for PEFT files.
    Strength is ComfyUI's: W + strength · (W' − W), a straight line from the base weight to the fully
    patched one (PEFT instead scales ΔW before normalising; the two agree at strength 1).
    """

    magnitude: Tensor
    axis: str
    eps: float = FP32_EPS

    def apply(self, weight: Tensor, delta: Tensor, strength: float) -> Tensor:
        w = weight.to(torch.float32)
        full = w + delta
        norm = full.norm(dim=1 if self.axis == ROW else 0, keepdim=True)
        magnitude = _f32(self.magnitude, w.device).reshape(norm.shape)
        full = full * (magnitude / (norm + self.eps))
        if strength == 1.0:
            return full
        return w + strength * (full - w)


class _AdapterBase:
    """Shared `delta`/`merged`; subclasses define `_raw(device)`, `scale`, `shape`, `dora`."""

    kind = ""
    dora: Dora | None = None

    @property
    def scale(self) -> float:
        return 1.0

    def _raw(self, device) -> Tensor:
        raise NotImplementedError

    def delta(self, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        return (self._raw(device) * self.scale).to(dtype)

    def factors(self) -> tuple[Tensor, Tensor] | None:
        return None

    def merged(self, weight: Tensor, strength: float = 1.0) -> Tensor:
        raw = self._raw(weight.device).reshape(weight.shape)
        if self.dora is not None:
            return self.dora.apply(weight, raw * self.scale, strength)
        return weight.to(torch.float32) + raw * (strength * self.scale)

    @property
    def label(self) -> str:
        return f"{self.kind}+dora" if self.dora is not None else self.kind


@dataclass(frozen=True, eq=False)
class LoRA(_AdapterBase):
    """ΔW = up @ down · alpha/rank. `alpha` None: scale 1."""

    up: Tensor  # (out, rank)
    down: Tensor  # (rank, in)
    alpha: float | None = None
    dora: Dora | None = None
    kind = "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.up.shape[0]), int(self.down.shape[1]))

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def _raw(self, device) -> Tensor:
        return _f32(self.up, device) @ _f32(self.down, device)

    def factors(self) -> tuple[Tensor, Tensor] | None:
        if self.dora is not None:
            return None
        return _f32(self.up, None) * self.scale, _f32(self.down, None)


def _tucker(core: Tensor, wb: Tensor, wa: Tensor, device) -> Tensor:
    """LyCORIS's Tucker rebuild (wa: (rank, out), wb: (rank, in)); trailing 1×1 kernel dims dropped."""
    out = torch.einsum("i j ..., j r, i p -> p r ...", _f32(core, device), _f32(wb, device), _f32(wa, device))
    out = out.reshape(out.shape[0], out.shape[1]) if out.dim() > 2 and out[0, 0].numel() == 1 else out
    return out.contiguous()  # einsum may return a permuted view, which torch.kron cannot take


@dataclass(frozen=True, eq=False)
class LoKr(_AdapterBase):
    """ΔW = kron(w1, w2) · alpha/dim; each factor full or decomposed (`_a @ _b`), w2 optionally Tucker."""

    w1: Tensor | None = None
    w1_a: Tensor | None = None
    w1_b: Tensor | None = None
    w2: Tensor | None = None
    w2_a: Tensor | None = None
    w2_b: Tensor | None = None
    t2: Tensor | None = None
    alpha: float | None = None
    dora: Dora | None = None
    kind = "lokr"

    @property
    def rank(self) -> int | None:
        if self.w2 is None and self.w2_b is not None:
            return int(self.w2_b.shape[0])
        if self.w1 is None and self.w1_b is not None:
            return int(self.w1_b.shape[0])
        return None

    def _factor_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        w1 = tuple(self.w1.shape) if self.w1 is not None else (self.w1_a.shape[0], self.w1_b.shape[1])  # type: ignore[union-attr]
        if self.w2 is not None:
            w2 = tuple(self.w2.shape[:2])
        elif self.t2 is not None:
            w2 = (self.w2_a.shape[1], self.w2_b.shape[1])  # type: ignore[union-attr]
        else:
            w2 = (self.w2_a.shape[0], self.w2_b.shape[1])  # type: ignore[union-attr]
        return (int(w1[0]), int(w1[1])), (int(w2[0]), int(w2[1]))

    @property
    def shape(self) -> tuple[int, ...]:
        (a, b), (c, d) = self._factor_shapes()
        return (a * c, b * d)

    @property
    def scale(self) -> float:
        rank = self.rank
        return self.alpha / rank if self.alpha is not None and rank else 1.0

    def _raw(self, device) -> Tensor:
        w1 = (
            _f32(self.w1, device)
            if self.w1 is not None
            else _f32(self.w1_a, device) @ _f32(self.w1_b, device)
        )
        if self.w2 is not None:
            w2 = _f32(self.w2, device)
        elif self.t2 is not None:
            w2 = _tucker(self.t2, self.w2_b, self.w2_a, device)  # type: ignore[arg-type]
        else:
            w2 = _f32(self.w2_a, device) @ _f32(self.w2_b, device)  # type: ignore[arg-type]
        return torch.kron(w1, w2)


@dataclass(frozen=True, eq=False)
class LoHa(_AdapterBase):
    """ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha/rank (Tucker cores t1/t2 when present)."""

    w1_a: Tensor
    w1_b: Tensor
    w2_a: Tensor
    w2_b: Tensor
    t1: Tensor | None = None
    t2: Tensor | None = None
    alpha: float | None = None
    dora: Dora | None = None
    kind = "loha"

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        rows = self.w1_a.shape[1] if self.t1 is not None else self.w1_a.shape[0]
        return (int(rows), int(self.w1_b.shape[1]))

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def _raw(self, device) -> Tensor:
        if self.t1 is not None and self.t2 is not None:
            m1 = _tucker(self.t1, self.w1_b, self.w1_a, device)
            m2 = _tucker(self.t2, self.w2_b, self.w2_a, device)
        else:
            m1 = _f32(self.w1_a, device) @ _f32(self.w1_b, device)
            m2 = _f32(self.w2_a, device) @ _f32(self.w2_b, device)
        return m1 * m2


@dataclass(frozen=True, eq=False)
class Full(_AdapterBase):
    """A stored difference: ΔW = diff · scale (weights, biases, norms; `scale` ≠ 1 only for PEFT biases)."""

    diff: Tensor
    factor: float = 1.0
    kind = "diff"

    @property
    def rank(self) -> None:
        return None

    @property
    def alpha(self) -> None:
        return None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.diff.shape)

    @property
    def scale(self) -> float:
        return self.factor

    def _raw(self, device) -> Tensor:
        return _f32(self.diff, device)


Adapter = LoRA | LoKr | LoHa | Full
