"""Samplers by ComfyUI name, all with one signature (see `SamplerFn`).

Only the flow-model ("CONST") behaviour of each ComfyUI sampler is implemented: that is what
ComfyUI runs for Z-Image. Settings ComfyUI's KSampler node does not expose (eta, s_noise, solver
type) are fixed at ComfyUI's defaults.
"""

from __future__ import annotations

from zturbo.errors import InputError
from zturbo.sampling.base import Denoiser, SamplerFn, StepCallback
from zturbo.sampling.ode import sample_dpmpp_2m, sample_euler, sample_heun, sample_res_multistep
from zturbo.sampling.sde import (
    sample_dpmpp_2m_sde,
    sample_dpmpp_sde,
    sample_er_sde,
    sample_euler_ancestral,
)

SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "res_multistep": sample_res_multistep,
    "er_sde": sample_er_sde,
}


def get_sampler(name: str) -> SamplerFn:
    """The sampler called `name` in ComfyUI; an unknown name lists the valid ones."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise InputError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}") from None


__all__ = ["SAMPLERS", "Denoiser", "SamplerFn", "StepCallback", "get_sampler"]
