"""ComfyUI's custom-sampling nodes (comfy_extras/nodes_custom_sampler.py), CFGNorm (nodes_cfg.py) and
zturbo's ZTurboSeedVariety (a MODEL patch like CFGNorm: see zturbo.sampling.variety).

The pieces a KSampler bundles, as separate values: SIGMAS (1-D float tensors, ending in 0), NOISE,
GUIDER and SAMPLER (the small dataclasses of `engine_api`), put together by SamplerCustomAdvanced;
SamplerCustom takes model, cfg and prompts directly. Sampling itself is the engine's
(`sample_sigmas`), sharing its core with KSampler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.engine_api import Guider, Noise, Sampler
from zturbo.nodes.sampling import sampler_options, scheduler_options
from zturbo.nodes.schema import Boolean, Combo, Float, Int, Link, NodeSchema, Output
from zturbo.sampling.noise import SEED_MAX

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext

MODULE = "comfy_extras.nodes_custom_sampler"


def _schema(name: str, category: str, inputs: tuple, outputs: tuple, **kw: Any) -> NodeSchema:
    return NodeSchema(
        name=name,
        category=f"model/sampling/{category}",
        style="v3",
        python_module=MODULE,
        inputs=inputs,
        outputs=outputs,
        **kw,
    )


class BasicScheduler(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "BasicScheduler",
        "schedulers",
        (
            Link("model", "MODEL"),
            Combo("scheduler", scheduler_options),
            Int("steps", default=20, min=1, max=10000),
            Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
        ),
        (Output("SIGMAS"),),
    )

    def execute(self, ctx: NodeContext, model: Any, scheduler: str, steps: int, denoise: float) -> tuple:
        return (require_engine(ctx).sigmas(model, scheduler, steps, denoise),)


class KSamplerSelect(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "KSamplerSelect", "samplers", (Combo("sampler_name", sampler_options),), (Output("SAMPLER"),)
    )

    def execute(self, ctx: NodeContext, sampler_name: str) -> tuple[Sampler]:
        return (Sampler(sampler_name),)


class RandomNoise(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "RandomNoise",
        "noise",
        (Int("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),),
        (Output("NOISE"),),
    )

    def execute(self, ctx: NodeContext, noise_seed: int) -> tuple[Noise]:
        return (Noise(noise_seed),)


class DisableNoise(Node):
    schema: ClassVar[NodeSchema] = _schema("DisableNoise", "noise", (), (Output("NOISE"),))

    def execute(self, ctx: NodeContext) -> tuple[Noise]:
        return (Noise(0, enabled=False),)


class CFGGuider(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "CFGGuider",
        "guiders",
        (
            Link("model", "MODEL"),
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        ),
        (Output("GUIDER"),),
        display_name="CFG Guider",
    )

    def execute(
        self, ctx: NodeContext, model: Any, positive: Any, negative: Any, cfg: float
    ) -> tuple[Guider]:
        return (Guider(model, positive, negative, cfg),)


class BasicGuider(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "BasicGuider",
        "guiders",
        (Link("model", "MODEL"), Link("conditioning", "CONDITIONING")),
        (Output("GUIDER"),),
        display_name="Basic Guider",
    )

    def execute(self, ctx: NodeContext, model: Any, conditioning: Any) -> tuple[Guider]:
        return (Guider(model, conditioning),)  # the positive only: one model call per step


class SplitSigmas(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "SplitSigmas",
        "sigmas",
        (Link("sigmas", "SIGMAS"), Int("step", default=0, min=0, max=10000)),
        (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")),
    )

    def execute(self, ctx: NodeContext, sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (sigmas[: step + 1], sigmas[step:])  # both share sigma `step`


class FlipSigmas(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "FlipSigmas", "sigmas", (Link("sigmas", "SIGMAS"),), (Output("SIGMAS"),)
    )

    def execute(self, ctx: NodeContext, sigmas: torch.Tensor) -> tuple[torch.Tensor]:
        if len(sigmas) == 0:
            return (sigmas,)
        flipped = sigmas.flip(0)  # a copy
        if flipped[0] == 0:
            flipped[0] = 0.0001  # a schedule cannot start at sigma 0
        return (flipped,)


def _sample(
    ctx: NodeContext, guider: Guider, sampler: Sampler, sigmas: torch.Tensor, latent: dict, noise: Noise
) -> tuple[dict, dict]:
    """Run the engine and build ComfyUI's two outputs: the latents, and the last step's denoised
    estimate (the latents again when no step ran); other LATENT keys are kept."""
    samples, denoised = require_engine(ctx).sample_sigmas(
        guider.model,
        guider.positive,
        guider.negative,
        latent["samples"],
        sigmas=sigmas,
        cfg=guider.cfg,
        sampler_name=sampler.name,
        seed=noise.seed,
        add_noise=noise.enabled,
        batch_index=latent.get("batch_index"),
        progress=ctx.progress,
        preview=ctx.wants_preview,
        noise_mask=latent.get("noise_mask"),
    )
    out = {
        k: v for k, v in latent.items() if k not in ("downscale_ratio_spacial", "downscale_ratio_temporal")
    }
    out["samples"] = samples
    if denoised is None:
        return out, out
    return out, {**latent, "samples": denoised}


class SamplerCustom(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "SamplerCustom",
        "custom",
        (
            Link("model", "MODEL"),
            Boolean("add_noise", default=True, advanced=True),
            Int("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
            Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("sampler", "SAMPLER"),
            Link("sigmas", "SIGMAS"),
            Link("latent_image", "LATENT"),
        ),
        (Output("LATENT", "output"), Output("LATENT", "denoised_output")),
    )

    def execute(
        self, ctx: NodeContext, model: Any, add_noise: bool, noise_seed: int, cfg: float, positive: Any,
        negative: Any, sampler: Sampler, sigmas: torch.Tensor, latent_image: dict,
    ) -> tuple[dict, dict]:  # fmt: skip
        guider = Guider(model, positive, negative, cfg)
        return _sample(ctx, guider, sampler, sigmas, latent_image, Noise(noise_seed, enabled=add_noise))


class SamplerCustomAdvanced(Node):
    schema: ClassVar[NodeSchema] = _schema(
        "SamplerCustomAdvanced",
        "custom",
        (
            Link("noise", "NOISE"),
            Link("guider", "GUIDER"),
            Link("sampler", "SAMPLER"),
            Link("sigmas", "SIGMAS"),
            Link("latent_image", "LATENT"),
        ),
        (Output("LATENT", "output"), Output("LATENT", "denoised_output")),
    )

    def execute(
        self, ctx: NodeContext, noise: Noise, guider: Guider, sampler: Sampler, sigmas: torch.Tensor,
        latent_image: dict,
    ) -> tuple[dict, dict]:  # fmt: skip
        return _sample(ctx, guider, sampler, sigmas, latent_image, noise)


PRE_CFG_TOOLTIP = (
    "If true, rescale the combined noise BEFORE the sampler's CFG combine, without clamping (can amplify). "
    "Matches the norm-scaled CFG used by models like Lens. Default false keeps the original post-CFG "
    "x0-space attenuate-only behavior."
)


class CFGNorm(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="CFGNorm",
        category="advanced/guidance",
        style="v3",
        python_module="comfy_extras.nodes_cfg",
        inputs=(
            Link("model", "MODEL"),
            Float("strength", default=1.0, min=0.0, max=100.0, step=0.01),
            Boolean("pre_cfg", default=False, optional=True, tooltip=PRE_CFG_TOOLTIP),
        ),
        outputs=(Output("MODEL", "patched_model"),),
    )

    def execute(self, ctx: NodeContext, model: Any, strength: float, pre_cfg: bool = False) -> tuple[Any]:
        return (require_engine(ctx).with_cfg_norm(model, strength, pre_cfg),)


VARIETY_TOOLTIP = (
    "Noise added to the prompt's features, this many times their RMS, seeded by the sampler's seed, so "
    "seeds give different pictures of the same prompt (0 = off, exactly the unpatched model; 0.1-0.5 typical)."
)


class ZTurboSeedVariety(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ZTurboSeedVariety",
        display_name="Seed Variety (zturbo)",
        category="advanced/model",
        style="v3",
        python_module="custom_nodes.zturbo",
        description="Perturbs the positive conditioning during the first steps only: more variety across seeds.",
        inputs=(
            Link("model", "MODEL"),
            Float("strength", default=0.3, min=0.0, max=10.0, step=0.01, tooltip=VARIETY_TOOLTIP),
            Float("steps_fraction", default=0.3, min=0.01, max=1.0, step=0.01,
                  tooltip="The fraction of the first sampling steps it acts on."),
        ),
        outputs=(Output("MODEL", "patched_model"),),
    )  # fmt: skip

    def execute(self, ctx: NodeContext, model: Any, strength: float, steps_fraction: float) -> tuple[Any]:
        return (require_engine(ctx).with_variety(model, strength, steps_fraction),)


NODES = (
    BasicScheduler, KSamplerSelect, RandomNoise, DisableNoise, CFGGuider, BasicGuider, SplitSigmas,
    FlipSigmas, SamplerCustom, SamplerCustomAdvanced, CFGNorm, ZTurboSeedVariety,
)  # fmt: skip
