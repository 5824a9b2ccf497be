"""Sampling with a noise mask (SetLatentNoiseMask, VAEEncodeForInpaint): only the masked latents change.

ComfyUI's `KSamplerX0Inpaint`, as a denoiser wrapper: before each model call the unmasked part of x is
replaced by the original latent noised to the current sigma, σ·noise + (1−σ)·latent, and the unmasked
part of the estimate by the original latent. With Euler this keeps the unmasked part of x on the
original's noising path exactly, the step diffusers' ZImageInpaintPipeline takes explicitly after each
step (the same result for a 0/1 mask).
"""

from __future__ import annotations

from torch import Tensor

from zturbo.sampling.base import Denoiser


class InpaintDenoiser:
    """`denoiser` restricted to `mask` (1 = repaint; broadcastable to x), around model-space `latent`
    and the run's starting `noise`. Forwards the inner denoiser's `uncond_denoised` (CFG++ samplers)."""

    def __init__(self, denoiser: Denoiser, mask: Tensor, latent: Tensor, noise: Tensor) -> None:
        self.inner = denoiser
        self.mask = mask
        self.latent = latent
        self.noise = noise

    @property
    def uncond_denoised(self) -> Tensor | None:
        uncond = getattr(self.inner, "uncond_denoised", None)
        return None if uncond is None else self._keep_known(uncond)

    def _keep_known(self, denoised: Tensor) -> Tensor:
        return denoised * self.mask + self.latent * (1.0 - self.mask)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1)).to(x)
        known = s * self.noise + (1.0 - s) * self.latent
        x = x * self.mask + known * (1.0 - self.mask)
        return self._keep_known(self.inner(x, sigma))
