"""The Z-Image transformer as a denoiser: (x, sigma) → x0 estimate, with ComfyUI's CFG convention.

The network is called with t = 1 − σ (0 = pure noise) and its output points from noise toward data,
so the flow velocity is −out and the denoised estimate is x + σ·out. With cfg == 1 only the positive
prompt is evaluated; otherwise positive and negative run in one batched forward and are combined as
`neg + cfg·(pos − neg)` on the denoised estimates (equivalent to doing it on velocities).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from zturbo.errors import GenerationError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def transformer_forward(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, captions: list[torch.Tensor]
) -> torch.Tensor:
    """Run the transformer on a batch: x (B,C,h,w), t (B,), one caption tensor per sample.

    zturbo's own DiT (`batched_api`) takes the batch as tensors; diffusers' class takes lists of
    (C, F=1, h, w) latents. Both get t in the weights' dtype, as the reference pipeline passes it.
    """
    param = next(model.parameters())
    caps = [c.to(param.device, param.dtype) for c in captions]
    t = t.to(param.device, param.dtype)
    if getattr(model, "batched_api", False):
        return model(x.to(param.device, param.dtype), t, caps).float()
    latents = list(x.to(param.dtype).unsqueeze(2).unbind(0))  # (C, F=1, h, w) each
    out = model(latents, t, caps, return_dict=False)[0]
    return torch.stack([o.float() for o in out]).squeeze(2)


class ZImageDenoiser:
    """Callable denoiser for the samplers; counts steps to report where NaNs first appeared."""

    def __init__(
        self,
        model: nn.Module,
        positive: list[torch.Tensor],
        negative: list[torch.Tensor] | None,
        cfg: float,
        multiplier: float = 1.0,
    ) -> None:
        if cfg != 1.0 and negative is None:
            raise ValueError("cfg != 1 needs a negative conditioning")
        self.model = model
        self.positive = positive
        self.negative = negative if cfg != 1.0 else None
        self.cfg = cfg
        self.multiplier = multiplier
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        sigma = sigma.reshape(-1).expand(batch).to(torch.float32)
        t = 1.0 - sigma * self.multiplier
        positive = _repeat_to(self.positive, batch)
        if self.negative is None:
            out = transformer_forward(self.model, x, t, positive)
        else:
            negative = _repeat_to(self.negative, batch)
            both = transformer_forward(self.model, torch.cat([x, x]), torch.cat([t, t]), positive + negative)
            pos, neg = both[:batch], both[batch:]
            out = neg + self.cfg * (pos - neg)
        self.calls += 1
        if not torch.isfinite(out).all():
            raise GenerationError(
                f"the diffusion model produced NaN/inf values at model call {self.calls} (sigma {float(sigma[0]):.4f}). "
                "This usually means fp16 overflow: use --dtype bf16 (or fp32)."
            )
        x_dev = x.to(out.device, torch.float32)
        return x_dev + sigma.to(out.device).view(-1, 1, 1, 1) * out


def _repeat_to(conds: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """One conditioning per sample: a single prompt is shared by the whole batch."""
    if len(conds) == batch:
        return conds
    if batch % len(conds):
        raise ValueError(f"{len(conds)} prompts cannot be spread over a batch of {batch}")
    return [c for c in conds for _ in range(batch // len(conds))]
