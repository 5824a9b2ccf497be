"""Samplers by ComfyUI name (`comfy.samplers.SAMPLER_NAMES`, in its order), all with one signature.

Only the flow-model ("CONST") behaviour of each ComfyUI sampler is implemented: that is what
ComfyUI runs for Z-Image. Settings ComfyUI's KSampler node does not expose (eta, s_noise, solver
type, orders) are fixed at ComfyUI's defaults.

Names that are the same computation here:

* `ddim` is ComfyUI's `euler` with a different inpainting noise option (zturbo has no inpainting
  masks), so it is `euler`;
* the `_gpu` variants differ from their plain names only in where ComfyUI keeps the Brownian tree
  (on the model's device instead of the CPU). The tree here is always on the CPU, so on every device
  they give ComfyUI's CPU result, which is also what its `_gpu` samplers give on a CPU.
"""

from __future__ import annotations

from zturbo.errors import InputError
from zturbo.sampling.base import Denoiser, SamplerFn, StepCallback
from zturbo.sampling.cfg_pp import (
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2s_ancestral_cfg_pp,
    sample_euler_ancestral_cfg_pp,
    sample_euler_cfg_pp,
)
from zturbo.sampling.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from zturbo.sampling.multistep import sample_deis, sample_ipndm, sample_ipndm_v
from zturbo.sampling.ode import (
    sample_dpm_2,
    sample_dpmpp_2m,
    sample_euler,
    sample_gradient_estimation,
    sample_gradient_estimation_cfg_pp,
    sample_heun,
    sample_heunpp2,
    sample_lms,
)
from zturbo.sampling.res import (
    sample_res_multistep,
    sample_res_multistep_ancestral,
    sample_res_multistep_ancestral_cfg_pp,
    sample_res_multistep_cfg_pp,
)
from zturbo.sampling.sa_solver import sample_sa_solver, sample_sa_solver_pece
from zturbo.sampling.sde import (
    sample_ddpm,
    sample_dpm_2_ancestral,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_er_sde,
    sample_euler_ancestral,
    sample_lcm,
)
from zturbo.sampling.seeds import (
    sample_exp_heun_2_x0,
    sample_exp_heun_2_x0_sde,
    sample_seeds_2,
    sample_seeds_3,
)
from zturbo.sampling.unipc import sample_uni_pc, sample_uni_pc_bh2

SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "exp_heun_2_x0": sample_exp_heun_2_x0,
    "exp_heun_2_x0_sde": sample_exp_heun_2_x0_sde,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": sample_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
    "ddim": sample_euler,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}

UNCOND_SAMPLERS = frozenset(name for name in SAMPLERS if name.endswith("_cfg_pp"))
"""Samplers that read the unconditional estimate (CFG++). ComfyUI turns its cfg-1 shortcut off for
them, so the negative prompt is evaluated even at cfg 1 (`evaluates_negative`)."""

DISCARD_PENULTIMATE_SIGMA = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})
"""ComfyUI's KSampler computes steps + 1 sigmas for these and drops the penultimate one."""


def get_sampler(name: str) -> SamplerFn:
    """The sampler called `name` in ComfyUI; an unknown name lists the valid ones."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise InputError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}") from None


def evaluates_negative(sampler: str, cfg: float) -> bool:
    """Whether ComfyUI runs the negative prompt: when cfg != 1, and always for the CFG++ samplers."""
    return cfg != 1.0 or sampler in UNCOND_SAMPLERS


__all__ = [
    "DISCARD_PENULTIMATE_SIGMA",
    "SAMPLERS",
    "UNCOND_SAMPLERS",
    "Denoiser",
    "SamplerFn",
    "StepCallback",
    "evaluates_negative",
    "get_sampler",
]
