"""Sampling nodes: the model's flow shift and the two KSamplers.

Sampler and scheduler choices come from the engine when there is one, so `/object_info` offers only
what can actually run; without an engine they are ComfyUI's own lists (for tests and conversions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from zturbo.nodes.base import Node, require_engine
from zturbo.nodes.schema import Combo, Float, Int, Link, NodeSchema, Output
from zturbo.sampling.noise import SEED_MAX

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext, NodeContext

COMFY_SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu",
    "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v",
    "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
    "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
COMFY_SCHEDULERS = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)  # fmt: skip


def sampler_options(ctx: ExecutionContext | None) -> list[str]:
    engine = ctx.engine if ctx is not None else None
    return list(engine.sampler_names()) if engine is not None else list(COMFY_SAMPLERS)


def scheduler_options(ctx: ExecutionContext | None) -> list[str]:
    engine = ctx.engine if ctx is not None else None
    return list(engine.scheduler_names()) if engine is not None else list(COMFY_SCHEDULERS)


class ModelSamplingAuraFlow(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="ModelSamplingAuraFlow",
        category="model/patch",
        python_module="comfy_extras.nodes_model_advanced",
        inputs=(Link("model", "MODEL"), Float("shift", default=1.73, min=0.0, max=100.0, step=0.01)),
        outputs=(Output("MODEL"),),
    )

    def execute(self, ctx: NodeContext, model: Any, shift: float) -> tuple[Any]:
        # ComfyUI's AuraFlow patch is ModelSamplingSD3 with multiplier 1.0 (timestep = sigma).
        return (require_engine(ctx).with_shift(model, shift, 1.0),)


def _run_sampler(ctx: NodeContext, model: Any, positive: Any, negative: Any, latent: dict, **kw: Any) -> dict:
    """Call the engine and keep the rest of the LATENT dict, as ComfyUI's common_ksampler does."""
    samples = require_engine(ctx).sample(
        model, positive, negative, latent["samples"], progress=ctx.progress, preview=ctx.wants_preview,
        noise_mask=latent.get("noise_mask"), **kw,
    )  # fmt: skip
    out = dict(latent)
    out["samples"] = samples
    return out


class KSampler(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="KSampler",
        display_name="KSampler",
        category="model/sampling",
        description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
        inputs=(
            Link("model", "MODEL", tooltip="The model used for denoising the input latent."),
            Int("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                tooltip="The random seed used for creating the noise."),
            Int("steps", default=20, min=1, max=10000,
                tooltip="The number of steps used in the denoising process."),
            Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                  tooltip="The Classifier-Free Guidance scale balances creativity and adherence to the "
                  "prompt. Higher values result in images more closely matching the prompt however too "
                  "high values will negatively impact quality."),
            Combo("sampler_name", sampler_options,
                  tooltip="The algorithm used when sampling, this can affect the quality, speed, and "
                  "style of the generated output."),
            Combo("scheduler", scheduler_options,
                  tooltip="The scheduler controls how noise is gradually removed to form the image."),
            Link("positive", "CONDITIONING",
                 tooltip="The conditioning describing the attributes you want to include in the image."),
            Link("negative", "CONDITIONING",
                 tooltip="The conditioning describing the attributes you want to exclude from the image."),
            Link("latent_image", "LATENT", tooltip="The latent image to denoise."),
            Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                  tooltip="The amount of denoising applied, lower values will maintain the structure of "
                  "the initial image allowing for image to image sampling."),
        ),
        outputs=(Output("LATENT", tooltip="The denoised latent."),),
    )  # fmt: skip

    def execute(
        self, ctx: NodeContext, model: Any, seed: int, steps: int, cfg: float, sampler_name: str,
        scheduler: str, positive: Any, negative: Any, latent_image: dict, denoise: float = 1.0,
    ) -> tuple[dict]:  # fmt: skip
        out = _run_sampler(
            ctx, model, positive, negative, latent_image, seed=seed, steps=steps, cfg=cfg,
            sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
        )  # fmt: skip
        return (out,)


class KSamplerAdvanced(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="KSamplerAdvanced",
        display_name="KSampler (Advanced)",
        category="model/sampling",
        inputs=(
            Link("model", "MODEL"),
            Combo("add_noise", ("enable", "disable")),
            Int("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
            Int("steps", default=20, min=1, max=10000),
            Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            Combo("sampler_name", sampler_options),
            Combo("scheduler", scheduler_options),
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("latent_image", "LATENT"),
            Int("start_at_step", default=0, min=0, max=10000),
            Int("end_at_step", default=10000, min=0, max=10000),
            Combo("return_with_leftover_noise", ("disable", "enable")),
        ),
        outputs=(Output("LATENT"),),
    )

    def execute(
        self, ctx: NodeContext, model: Any, add_noise: str, noise_seed: int, steps: int, cfg: float,
        sampler_name: str, scheduler: str, positive: Any, negative: Any, latent_image: dict,
        start_at_step: int, end_at_step: int, return_with_leftover_noise: str,
    ) -> tuple[dict]:  # fmt: skip
        out = _run_sampler(
            ctx, model, positive, negative, latent_image, seed=noise_seed, steps=steps, cfg=cfg,
            sampler_name=sampler_name, scheduler=scheduler, denoise=1.0,
            add_noise=add_noise == "enable", start_step=start_at_step, end_step=end_at_step,
            return_with_leftover_noise=return_with_leftover_noise == "enable",
        )  # fmt: skip
        return (out,)


NODES = (ModelSamplingAuraFlow, KSampler, KSamplerAdvanced)
