"""The protocol model nodes use to reach the engine (`ctx.engine`).

Nodes stay declarative: loading, text encoding, sampling and VAE work live in the engine, which
implements this protocol. MODEL, CLIP, VAE and CONDITIONING values are opaque to the
graph: whatever the engine returns is cached and handed back to it unchanged.

Tensors follow ComfyUI's conventions: IMAGE is [B, H, W, C] float in 0..1; latents are
[B, 16, H/8, W/8] in raw VAE space (the engine applies any latent scaling itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from zturbo.progress import ProgressFn

if TYPE_CHECKING:
    from torch import Tensor


# The custom-sampling values (ComfyUI's NOISE, GUIDER, SAMPLER). SIGMAS are 1-D float tensors.


@dataclass(frozen=True)
class Noise:
    """NOISE: RandomNoise's seeded starting noise, or none at all (DisableNoise: zeros)."""

    seed: int = 0
    enabled: bool = True


@dataclass(frozen=True)
class Guider:
    """GUIDER: what the model is guided by (CFGGuider; BasicGuider has no negative and cfg 1).
    `model` and the conditionings are the engine's opaque values."""

    model: Any
    positive: Any
    negative: Any = None
    cfg: float = 1.0


@dataclass(frozen=True)
class Sampler:
    """SAMPLER: a sampler by its ComfyUI name (KSamplerSelect)."""

    name: str


@runtime_checkable
class EngineAPI(Protocol):
    def load_dit(self, path: Path, weight_dtype: str) -> Any:
        """Load a diffusion model file; `weight_dtype` is UNETLoader's choice ("default", "fp8_e4m3fn", ...)."""

    def load_text_encoder(self, path: Path, device: str) -> Any:
        """Load a text encoder file; `device` is CLIPLoader's choice ("default" or "cpu")."""

    def load_vae(self, path: Path) -> Any: ...

    def load_lora(
        self,
        model: Any,
        clip: Any | None,
        path: Path,
        strength_model: float,
        strength_clip: float,
        on_report: Callable[[Any], None] | None = None,
    ) -> tuple[Any, Any | None]:
        """MODEL and CLIP (None: model only) with the LoRA file's patches added at these strengths;
        `on_report` is given the file's load report (`zturbo.lora.report.LoraReport`)."""

    def load_upscale_model(self, path: Path) -> Any:
        """An upscale model file (ESRGAN family, through spandrel) for ImageUpscaleWithModel."""

    def upscale(self, model: Any, image: Tensor, progress: ProgressFn | None = None) -> Tensor:
        """IMAGE → IMAGE enlarged by the model's scale (tiled)."""

    def enhance_prompt(
        self,
        clip: Any,
        text: str,
        *,
        seed: int = 0,
        max_tokens: int = 300,
        system: str | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> str:
        """The idea `text` rewritten by CLIP's text encoder as a causal LM (seeded sampling, at most
        `max_tokens` new tokens; `system` None: the default system prompt; `on_token` streams it)."""

    def encode_text(self, clip: Any, text: str) -> Any:
        """Return CONDITIONING for `text`."""

    def zero_conditioning(self, cond: Any) -> Any:
        """Return CONDITIONING of the same shape with zeroed embeddings (ConditioningZeroOut)."""

    def with_shift(self, model: Any, shift: float, multiplier: float) -> Any:
        """Return a MODEL whose flow sigma table uses `shift` (ModelSamplingAuraFlow); the input stays unchanged."""

    def sample(
        self,
        model: Any,
        positive: Any,
        negative: Any,
        latent: Tensor,
        *,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        denoise: float,
        add_noise: bool = True,
        start_step: int | None = None,
        end_step: int | None = None,
        return_with_leftover_noise: bool = False,
        progress: ProgressFn,
        preview: bool = False,
        noise_mask: Tensor | None = None,
    ) -> Tensor:
        """Denoise `latent` (raw VAE space in and out) and return the new latents."""

    def sigmas(self, model: Any, scheduler: str, steps: int, denoise: float) -> Tensor:
        """BasicScheduler: the MODEL's schedule (float32 CPU, ends in 0; empty for denoise 0)."""

    def sample_sigmas(
        self,
        model: Any,
        positive: Any,
        negative: Any,
        latent: Tensor,
        *,
        sigmas: Tensor,
        cfg: float,
        sampler_name: str,
        seed: int,
        add_noise: bool = True,
        batch_index: list[int] | None = None,
        progress: ProgressFn,
        preview: bool = False,
        noise_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Sample over explicit sigmas (SamplerCustom, SamplerCustomAdvanced): (latents, the last
        step's denoised estimate or None when no step ran), raw VAE space."""

    def with_cfg_norm(self, model: Any, strength: float, pre_cfg: bool) -> Any:
        """Return a MODEL with ComfyUI's CFGNorm patch added; the input stays unchanged."""

    def with_variety(self, model: Any, strength: float, fraction: float) -> Any:
        """Return a MODEL whose first `fraction` of steps see the positive prompt perturbed by noise
        seeded with the sampler's seed (strength 0: no perturbation); the input stays unchanged."""

    def load_checkpoint(self, path: Path) -> tuple[Any, Any, Any]:
        """MODEL, CLIP and VAE from one file that bundles all three (CheckpointLoaderSimple)."""

    def decode(self, vae: Any, latent: Tensor, tile: tuple[int, int] | None = None) -> Tensor:
        """Latents to IMAGE [B, H, W, 3] in 0..1; `tile` = (tile, overlap) pixels forces tiling."""

    def encode(self, vae: Any, image: Tensor, tile: tuple[int, int] | None = None) -> Tensor:
        """IMAGE [B, H, W, 3] (sides multiples of 8) to raw latents; `tile` as in decode."""

    def load_controlnet(self, path: Path) -> Any:
        """A MODEL_PATCH (a ControlNet) from a file (ModelPatchLoader)."""

    def apply_controlnet(
        self,
        model: Any,
        patch: Any,
        vae: Any,
        strength: float,
        image: Tensor | None = None,
        inpaint_image: Tensor | None = None,
        mask: Tensor | None = None,
        refiner_to_base: bool = True,
    ) -> Any:
        """A new MODEL with this ControlNet added (ZImageFunControlnet); the input MODEL is unchanged."""

    def sampler_names(self) -> list[str]: ...

    def scheduler_names(self) -> list[str]: ...
