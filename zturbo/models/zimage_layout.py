"""Token layout of Z-Image's sequences: padding, position ids, real-valued RoPE tables and masks.

Each sample's unified sequence is `[image tokens, image pads, caption tokens, caption pads]`, both
parts padded to a multiple of 32 with the learned pad tokens (which attend like any token). Position
ids (frame, h, w): caption token k, pads included → (1 + k, 0, 0); image token (h, w) →
(padded caption length + 1, h, w); image pads → (0, 0, 0). These depend only on the image size in
tokens and the padded caption lengths, so a `SequencePlan` (RoPE cos/sin in fp32 and the key masks) is
built once per such key and reused by every step — which also keeps all host-to-device copies out of
a CUDA-graph capture. A mask exists only when samples of the batch have different padded caption
lengths (batch padding); equal lengths run mask-free, which lets the fastest attention kernels run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SEQ_MULTIPLE = 32


def padded_length(n: int) -> int:
    """Length after padding to a multiple of 32 (as the model was trained)."""
    return n + (-n) % SEQ_MULTIPLE


@dataclass(frozen=True)
class SequencePlan:
    """Everything about a batch's sequences that does not depend on the values of x, t or captions.

    `rope` covers the unified sequence, (B or 1, S, head_dim/2) each; `image_rope` and `caption_rope`
    are its views for the refiners. Masks are (B, 1, 1, S) booleans (True = attend) or None.
    """

    image_len: int
    image_padded: int
    caption_padded: tuple[int, ...]
    rope: tuple[Tensor, Tensor]
    caption_rope: tuple[Tensor, Tensor]
    caption_mask: Tensor | None
    mask: Tensor | None

    @property
    def caption_width(self) -> int:
        return max(self.caption_padded)

    @property
    def image_rope(self) -> tuple[Tensor, Tensor]:
        cos, sin = self.rope
        return cos[:, : self.image_padded], sin[:, : self.image_padded]


def position_ids(h_tokens: int, w_tokens: int, caption_padded: int, caption_width: int) -> Tensor:
    """(frame, h, w) ids of one sample's unified sequence, caption part `caption_width` long."""
    image_len = h_tokens * w_tokens
    hh, ww = torch.meshgrid(torch.arange(h_tokens), torch.arange(w_tokens), indexing="ij")
    image = torch.stack([torch.full_like(hh, caption_padded + 1), hh, ww], dim=-1).reshape(image_len, 3)
    image_pads = torch.zeros(padded_length(image_len) - image_len, 3, dtype=torch.long)
    caption = torch.zeros(caption_width, 3, dtype=torch.long)
    caption[:, 0] = torch.arange(1, caption_width + 1)
    return torch.cat([image, image_pads, caption])


def rope_angles(ids: Tensor, axes_dims: list[int], theta: float) -> Tensor:
    """Rotation angles (S, head_dim/2) in fp32, rounded exactly as the reference's complex table."""
    parts = []
    for axis, dim in enumerate(axes_dims):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        parts.append((ids[:, axis].to(torch.float64)[:, None] * freqs[None]).float())
    return torch.cat(parts, dim=-1)


def rope_cos_sin(angles: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin on the CPU through `torch.polar`, as the reference builds its table: bit-identical."""
    table = torch.view_as_real(torch.polar(torch.ones_like(angles), angles))
    return table[..., 0].contiguous().to(device), table[..., 1].contiguous().to(device)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of x (B, S, H, D) by the table's angles, in fp32.

    Under `torch.compile` as real arithmetic (inductor cannot generate code for complex numbers, and the
    real form fuses with the QK-norm before it); in eager as one complex multiply, which is 3 kernels
    where the real form takes 9. Same values either way (the tests hold both to the reference).
    cos/sin: (B or 1, S, D/2) fp32.
    """
    if torch.compiler.is_compiling():
        return rope_real(x, cos, sin)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    rotated = pairs * torch.complex(cos, sin).unsqueeze(2)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def rope_real(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`apply_rope` with real ops, as one elementwise expression over the head dimension:
    out[i] = x[i]·cos + x[i^1]·(−sin if i is even else sin), i.e. (a + ib)(c + is) = (ac − bs) + i(as + bc).

    Written without `stack` so the compiler reads each pair's neighbour as a second load of the same cache
    line: the fused QK-norm + RoPE kernel takes ~40% less time than with the stacked (real, imag) form
    (H100/H200, `benchmarks/block_variants.py`).
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    cos2 = cos.repeat_interleave(2, dim=-1).unsqueeze(2)
    sin2 = torch.stack((-sin, sin), dim=-1).flatten(-2).unsqueeze(2)
    return (xf * cos2 + swapped * sin2).to(x.dtype)


class SequencePlans:
    """Cache of `SequencePlan`s keyed by (image tokens, padded caption lengths, device)."""

    def __init__(self, axes_dims: list[int], axes_lens: list[int], theta: float) -> None:
        self.axes_dims = list(axes_dims)
        self.axes_lens = list(axes_lens)
        self.theta = theta
        self._plans: dict[tuple, SequencePlan] = {}

    def get(
        self, h_tokens: int, w_tokens: int, caption_lens: list[int], device: torch.device
    ) -> SequencePlan:
        padded = tuple(padded_length(n) for n in caption_lens)
        key = (h_tokens, w_tokens, padded, str(device))
        if key not in self._plans:
            self._plans[key] = self._build(h_tokens, w_tokens, padded, device)
        return self._plans[key]

    def _build(
        self, h_tokens: int, w_tokens: int, padded: tuple[int, ...], device: torch.device
    ) -> SequencePlan:
        width = max(padded)
        image_len = h_tokens * w_tokens
        ids = [position_ids(h_tokens, w_tokens, p, width) for p in sorted(set(padded))]
        self._check_range(torch.cat(ids), h_tokens, w_tokens, width)
        by_len = dict(zip(sorted(set(padded)), ids, strict=True))
        per_sample = [by_len[p] for p in padded] if len(set(padded)) > 1 else [ids[0]]
        angles = torch.stack([rope_angles(i, self.axes_dims, self.theta) for i in per_sample])
        rope = rope_cos_sin(angles, device)
        image_padded = padded_length(image_len)
        caption_rope = (rope[0][:1, image_padded:], rope[1][:1, image_padded:])
        lengths = torch.tensor(padded)
        return SequencePlan(
            image_len=image_len,
            image_padded=image_padded,
            caption_padded=padded,
            rope=rope,
            caption_rope=caption_rope,
            caption_mask=_key_mask(lengths, width, device),
            mask=_key_mask(lengths + image_padded, image_padded + width, device),
        )

    def _check_range(self, ids: Tensor, h_tokens: int, w_tokens: int, width: int) -> None:
        """The reference indexes fixed tables of `axes_lens` rows; beyond them it fails, so do we."""
        top = ids.amax(dim=0).tolist()
        if any(t >= n for t, n in zip(top, self.axes_lens, strict=True)):
            raise ValueError(
                f"a {h_tokens}x{w_tokens}-token image with a {width}-token caption needs positions up to "
                f"{top}, beyond the model's range {self.axes_lens}"
            )


def _key_mask(lengths: Tensor, width: int, device: torch.device) -> Tensor | None:
    """(B, 1, 1, width) True where a key is real; None when every sample fills the width."""
    if bool((lengths == width).all()):
        return None
    return (torch.arange(width)[None, :] < lengths[:, None])[:, None, None, :].to(device)
