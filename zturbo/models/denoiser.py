"""The Z-Image transformer as a denoiser: (x, sigma) → x0 estimate, with ComfyUI's CFG convention.

The network is called with t = 1 − σ (0 = pure noise) and its output points from noise toward data,
so the flow velocity is −out and the denoised estimate is x + σ·out. With cfg == 1 only the positive
prompt is evaluated; otherwise positive and negative run in one batched forward and are combined as
`neg + cfg·(pos − neg)` on the denoised estimates (equivalent to doing it on velocities).
`uncond_at_cfg1` evaluates the negative at cfg 1 too (ComfyUI does for its CFG++ samplers), and every
call leaves its unconditional estimate in `uncond_denoised` (the output itself when no negative ran).

`variety` (zturbo.sampling.variety): the positive caption features perturbed with noise seeded by
`seed` for the calls in the first part of the schedule (None: the captions as given, no extra work).

With `step_cache > 0` the denoiser owns a `StepCache` (zturbo.models.zimage_dit) for its run and hands it
to every forward of zturbo's DiT: lossy first-block caching, off by default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from zturbo.errors import NonFiniteError
from zturbo.models.zimage_dit import StepCache, ZImageDiT
from zturbo.sampling.variety import SeedVariety

log = logging.getLogger(__name__)

# With the step cache on, the calls of the schedule's last k steps always run every layer (ComfyUI's
# FBCache/TeaCache nodes also let the end of sampling compute fully): the last step's estimate is the
# image, so it should not be built on a stale remainder. Sampler-agnostic: decided by sigma, so a
# second-order sampler's in-step evaluations of the last step are forced too.
STEP_CACHE_FULL_LAST_STEPS = 1


@dataclass(frozen=True)
class CFGNorm:
    """ComfyUI's CFGNorm model patch (comfy_extras/nodes_cfg.py), on the denoised estimates.

    Default (post-CFG): the guided estimate is scaled down per pixel so its channel norm does not
    exceed the positive estimate's, `out · clamp(‖pos‖/(‖out‖+1e-8), 0, 1) · strength`.
    `pre_cfg`: the combination itself, in noise space (x − denoised), is rescaled to the positive's
    channel norm without clamping, then blended with plain CFG by `strength`.
    """

    strength: float = 1.0
    pre_cfg: bool = False

    def combine(self, x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
        """The pre-CFG form: replaces `uncond + cfg·(cond − uncond)`."""
        cond_noise, uncond_noise = x - cond, x - uncond
        comb = uncond_noise + cfg * (cond_noise - uncond_noise)
        cond_norm = torch.linalg.vector_norm(cond_noise, dim=1, keepdim=True)
        comb_norm = torch.linalg.vector_norm(comb, dim=1, keepdim=True)
        rescale = torch.where(
            comb_norm > 0, cond_norm / comb_norm.clamp_min(1e-12), torch.ones_like(comb_norm)
        )
        rescaled = comb * rescale
        if self.strength != 1.0:
            rescaled = self.strength * rescaled + (1.0 - self.strength) * comb
        return x - rescaled

    def after(self, denoised: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The post-CFG form, applied to the guided estimate."""
        scale = (
            torch.norm(cond, dim=1, keepdim=True) / (torch.norm(denoised, dim=1, keepdim=True) + 1e-8)
        ).clamp(min=0.0, max=1.0)
        return denoised * scale * self.strength


def guided_estimate(
    x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, cfg: float, norms: tuple[CFGNorm, ...]
) -> torch.Tensor:
    """ComfyUI's `cfg_function` with CFGNorm patches: the last pre-CFG patch replaces the combination
    (an unevaluated negative counts as zeros, as in ComfyUI), then every post-CFG patch in order."""
    uncond = torch.zeros_like(cond) if uncond is None else uncond
    pre = [n for n in norms if n.pre_cfg]
    out = pre[-1].combine(x, cond, uncond, cfg) if pre else uncond + (cond - uncond) * cfg
    for norm in norms:
        if not norm.pre_cfg:
            out = norm.after(out, cond)
    return out


def transformer_forward(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    captions: list[torch.Tensor],
    step_cache: StepCache | None = None,
    controls: list = (),  # type: ignore[assignment]
) -> torch.Tensor:
    """`_transformer_forward`, for any latent size: an odd height or width (an image that is not a
    multiple of 16 pixels, e.g. in the 2K upscaler template) is padded circularly to the 2×2 patch and
    the output cropped back, as ComfyUI's `pad_to_patch_size` does."""
    h, w = x.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return _transformer_forward(model, x, t, captions, step_cache, controls)
    padded = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="circular")
    return _transformer_forward(model, padded, t, captions, step_cache, controls)[..., :h, :w]


def _transformer_forward(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    captions: list[torch.Tensor],
    step_cache: StepCache | None = None,
    controls: list = (),  # type: ignore[assignment]
) -> torch.Tensor:
    """Run the transformer on a batch: x (B,C,h,w), t (B,), one caption tensor per sample.

    zturbo's own DiT (`batched_api`) takes the batch as tensors; diffusers' class takes lists of
    (C, F=1, h, w) latents. Both get t in the weights' dtype, as the reference pipeline passes it,
    unless the model names its own `input_dtype` (zturbo's DiT off its plain path: fp32, so the
    caption features and t keep their range and precision; the weights are fp16 there).
    `step_cache` is for a `ZImageDiT` only (passed only when given). `controls` (zturbo.control):
    ControlNet inputs in the form the model takes (a `GraphedDiT` runs its DiT uncaptured with them).
    """
    param = next(model.parameters())
    dtype = getattr(model, "input_dtype", None) or param.dtype
    caps = [c.to(param.device, dtype) for c in captions]
    t = t.to(param.device, dtype)
    dit = getattr(model, "dit", None)
    if controls and isinstance(dit, ZImageDiT):
        model = dit  # CUDA graphs replay a forward without ControlNets
    if step_cache is not None or (controls and isinstance(model, ZImageDiT)):
        return model(x.to(param.device, dtype), t, caps, step_cache=step_cache, controls=controls).float()
    if getattr(model, "batched_api", False):
        return model(x.to(param.device, dtype), t, caps).float()
    latents = list(x.to(param.dtype).unsqueeze(2).unbind(0))  # (C, F=1, h, w) each
    extra = {}
    if controls:
        from zturbo.models.controlnet import reference_block_samples

        extra["controlnet_block_samples"] = reference_block_samples(model, list(controls), latents, t, caps)
    out = model(latents, t, caps, return_dict=False, **extra)[0]
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
        cfg_norms: tuple[CFGNorm, ...] = (),
        controls: list | None = None,
        variety: SeedVariety | None = None,
        seed: int = 0,
    ) -> None:
        if cfg != 1.0 and negative is None:
            raise ValueError("cfg != 1 needs a negative conditioning")
        self.model = model
        self.positive = positive
        self.negative = negative if cfg != 1.0 or uncond_at_cfg1 else None
        self.cfg = cfg
        self.multiplier = multiplier
        self.cfg_norms = cfg_norms  # CFGNorm patches of the MODEL (none: the plain combination below)
        self.controls = controls or []  # ControlNet inputs (zturbo.control), the same for every call
        self.uncond_denoised: torch.Tensor | None = None  # the last call's unconditional estimate
        self.calls = 0
        self._finite: list[tuple[torch.Tensor, torch.Tensor]] = []  # (all finite?, sigma) per call
        self.step_cache: StepCache | None = None
        self._full_below_sigma: float | None = None  # calls at sigma ≤ this run every layer
        if step_cache > 0:
            self._enable_step_cache(step_cache, sigmas)
        self.variety = variety if variety is not None and variety.strength > 0 else None
        self.seed = seed
        self._varied: list[torch.Tensor] | None = None  # the perturbed positives, drawn on first use
        self._varied_above = (
            0.0 if self.variety is None or sigmas is None else self.variety.active_above(sigmas)
        )

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

    def _varied_positive(self, positive: list[torch.Tensor]) -> list[torch.Tensor]:
        """The seed variety's perturbation of the positives, drawn once for the run."""
        if self._varied is None or len(self._varied) != len(positive):
            assert self.variety is not None
            self._varied = self.variety.perturb(positive, self.seed)
        return self._varied

    @property
    def skipped_calls(self) -> int:
        """Model calls that skipped main layers 1..N−1 (0 without the step cache)."""
        return 0 if self.step_cache is None else self.step_cache.skipped

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        sigma = sigma.reshape(-1).expand(batch).to(torch.float32)
        t = 1.0 - sigma * self.multiplier
        positive = _repeat_to(self.positive, batch)
        if self.variety is not None and float(sigma[0]) > self._varied_above:
            positive = self._varied_positive(positive)
        cache = self.step_cache
        if cache is not None:  # a device bool: read in the cache's one sync after layer 0
            below = self._full_below_sigma
            cache.force_full = False if below is None else sigma[0] <= below
        neg: torch.Tensor | None = None
        if self.negative is None:
            out = pos = transformer_forward(self.model, x, t, positive, cache, self.controls)
        else:
            negative = _repeat_to(self.negative, batch)
            both = transformer_forward(
                self.model, torch.cat([x, x]), torch.cat([t, t]), positive + negative, cache, self.controls
            )
            pos, neg = both[:batch], both[batch:]
            out = neg + self.cfg * (pos - neg)
        self.calls += 1
        self._finite.append((torch.isfinite(out).all(), sigma[0]))
        x_dev = x.to(out.device, torch.float32)
        sigma_dev = sigma.to(out.device).view(-1, 1, 1, 1)
        uncond = None if neg is None else x_dev + sigma_dev * neg
        if self.cfg_norms:
            cond = x_dev + sigma_dev * pos
            cfg = self.cfg if neg is not None else 1.0
            denoised = guided_estimate(x_dev, cond, uncond, cfg, self.cfg_norms)
        else:
            cond = denoised = x_dev + sigma_dev * out  # without a negative, `out` is the positive's
        self.uncond_denoised = cond if uncond is None else uncond
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
