"""The Z-Image transformer as a denoiser: (x, sigma) → x0 estimate, with ComfyUI's CFG convention.

The network is called with t = 1 − σ (0 = pure noise) and its output points from noise toward data,
so the flow velocity is −out and the denoised estimate is x + σ·out. With cfg == 1 only the positive
prompt is evaluated; otherwise positive and negative run in one batched forward and are combined as
`neg + cfg·(pos − neg)` on the denoised estimates (equivalent to doing it on velocities).
`uncond_at_cfg1` evaluates the negative at cfg 1 too (ComfyUI does for its CFG++ samplers), and every
call leaves its unconditional estimate in `uncond_denoised` (the output itself when no negative ran).

With `step_cache > 0` the denoiser owns a `StepCache` (zturbo.models.zimage_dit) for its run and hands it
to every forward of zturbo's DiT: lossy first-block caching, off by default.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from zturbo.errors import NonFiniteError
from zturbo.models.zimage_dit import StepCache, ZImageDiT

log = logging.getLogger(__name__)

# With the step cache on, the calls of the schedule's last k steps always run every layer (ComfyUI's
# FBCache/TeaCache nodes also let the end of sampling compute fully): the last step's estimate is the
# image, so it should not be built on a stale remainder. Sampler-agnostic: decided by sigma, so a
# second-order sampler's in-step evaluations of the last step are forced too.
STEP_CACHE_FULL_LAST_STEPS = 1


def transformer_forward(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    captions: list[torch.Tensor],
    step_cache: StepCache | None = None,
) -> torch.Tensor:
    """Run the transformer on a batch: x (B,C,h,w), t (B,), one caption tensor per sample.

    zturbo's own DiT (`batched_api`) takes the batch as tensors; diffusers' class takes lists of
    (C, F=1, h, w) latents. Both get t in the weights' dtype, as the reference pipeline passes it,
    unless the model names its own `input_dtype` (zturbo's DiT off its plain path: fp32, so the
    caption features and t keep their range and precision; the weights are fp16 there).
    `step_cache` is for a `ZImageDiT` only (passed only when given).
    """
    param = next(model.parameters())
    dtype = getattr(model, "input_dtype", None) or param.dtype
    caps = [c.to(param.device, dtype) for c in captions]
    t = t.to(param.device, dtype)
    if step_cache is not None:
        return model(x.to(param.device, dtype), t, caps, step_cache=step_cache).float()
    if getattr(model, "batched_api", False):
        return model(x.to(param.device, dtype), t, caps).float()
    latents = list(x.to(param.dtype).unsqueeze(2).unbind(0))  # (C, F=1, h, w) each
    out = model(latents, t, caps, return_dict=False)[0]
    return torch.stack([o.float() for o in out]).squeeze(2)


class ZImageDenoiser:
    """Callable denoiser for the samplers; remembers each call's finiteness to report where NaNs appeared.

    The check is deferred (`check_finite`, once after sampling): testing on the host every step would
    stall the CPU until the GPU finishes the step, so it could not queue the next one meanwhile.

    `step_cache` > 0 turns on first-block caching for this denoiser's run (see `StepCache`): a fresh
    cache per denoiser, so nothing carries over between jobs. `sigmas` (the run's schedule) marks the
    last `STEP_CACHE_FULL_LAST_STEPS` steps, whose calls always run every layer. It needs zturbo's DiT
    (a `GraphedDiT` runs its DiT without the graphs; diffusers' class runs without the cache, with a
    warning). `skipped_calls` counts the calls that skipped layers 1..N−1.
    """

    def __init__(
        self,
        model: nn.Module,
        positive: list[torch.Tensor],
        negative: list[torch.Tensor] | None,
        cfg: float,
        multiplier: float = 1.0,
        *,
        step_cache: float = 0.0,
        sigmas: torch.Tensor | None = None,
        uncond_at_cfg1: bool = False,
    ) -> None:
        if cfg != 1.0 and negative is None:
            raise ValueError("cfg != 1 needs a negative conditioning")
        self.model = model
        self.positive = positive
        self.negative = negative if cfg != 1.0 or uncond_at_cfg1 else None
        self.cfg = cfg
        self.multiplier = multiplier
        self.uncond_denoised: torch.Tensor | None = None  # the last call's unconditional estimate
        self.calls = 0
        self._finite: list[tuple[torch.Tensor, torch.Tensor]] = []  # (all finite?, sigma) per call
        self.step_cache: StepCache | None = None
        self._full_below_sigma: float | None = None  # calls at sigma ≤ this run every layer
        if step_cache > 0:
            self._enable_step_cache(step_cache, sigmas)

    def _enable_step_cache(self, threshold: float, sigmas: torch.Tensor | None) -> None:
        dit = self.model if isinstance(self.model, ZImageDiT) else getattr(self.model, "dit", None)
        if not isinstance(dit, ZImageDiT):
            log.warning("the step cache needs zturbo's DiT (speed eager, compile or max); running without it")
            return
        if dit is not self.model:  # GraphedDiT: a data-dependent skip cannot be replayed from a graph
            log.warning("step cache on: the DiT runs without its CUDA graphs")
            self.model = dit
        self.step_cache = StepCache(threshold)
        k = STEP_CACHE_FULL_LAST_STEPS
        if sigmas is not None and k > 0 and len(sigmas) > k:
            self._full_below_sigma = float(sigmas[-1 - k])

    @property
    def skipped_calls(self) -> int:
        """Model calls that skipped main layers 1..N−1 (0 without the step cache)."""
        return 0 if self.step_cache is None else self.step_cache.skipped

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        sigma = sigma.reshape(-1).expand(batch).to(torch.float32)
        t = 1.0 - sigma * self.multiplier
        positive = _repeat_to(self.positive, batch)
        cache = self.step_cache
        if cache is not None:  # a device bool: read in the cache's one sync after layer 0
            below = self._full_below_sigma
            cache.force_full = False if below is None else sigma[0] <= below
        neg: torch.Tensor | None = None
        if self.negative is None:
            out = transformer_forward(self.model, x, t, positive, cache)
        else:
            negative = _repeat_to(self.negative, batch)
            both = transformer_forward(
                self.model, torch.cat([x, x]), torch.cat([t, t]), positive + negative, cache
            )
            pos, neg = both[:batch], both[batch:]
            out = neg + self.cfg * (pos - neg)
        self.calls += 1
        self._finite.append((torch.isfinite(out).all(), sigma[0]))
        x_dev = x.to(out.device, torch.float32)
        sigma_dev = sigma.to(out.device).view(-1, 1, 1, 1)
        denoised = x_dev + sigma_dev * out
        self.uncond_denoised = denoised if neg is None else x_dev + sigma_dev * neg
        return denoised

    def check_finite(self) -> None:
        """Raise `NonFiniteError` if any call so far produced NaN/inf, naming the first (one host sync for
        all calls) and how the model computed (`Engine.sample` retries once on a safer path)."""
        if not self._finite:
            return
        flags = torch.stack([f for f, _ in self._finite]).cpu()
        if bool(flags.all()):
            return
        first = int((~flags).nonzero()[0])
        sigma = float(self._finite[first][1])
        raise NonFiniteError(
            f"the diffusion model produced NaN/inf values at model call {first + 1} (sigma {sigma:.4f}) "
            f"computing in {compute_description(self.model)}"
        )


def compute_description(model: nn.Module) -> str:
    """How a DiT computes, for messages: "bfloat16", "fp16-safe (fp32 residual)", "fp32 (bfloat16 weights)"."""
    dit = getattr(model, "dit", model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    precision = getattr(dit, "precision", "plain")
    if precision == "fp16":
        return "fp16-safe (fp32 residual)"
    if precision == "fp32" and dtype != "float32":
        return f"fp32 ({dtype} weights)"
    return dtype


def _repeat_to(conds: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """One conditioning per sample: a single prompt is shared by the whole batch."""
    if len(conds) == batch:
        return conds
    if batch % len(conds):
        raise ValueError(f"{len(conds)} prompts cannot be spread over a batch of {batch}")
    return [c for c in conds for _ in range(batch // len(conds))]
