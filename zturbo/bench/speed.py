"""Benchmark rows for zturbo's speed modes, each with a quality guard against the bf16 reference.

The guard runs the benchmark's own request (same prompt, seed and noise) through the bf16 eager
diffusers-class path once, and through each mode; a row records the relative error of the final
latents and the PSNR of the decoded images. For scale, the noise floor is the reference path run
again with attention forced to SDPA's math kernel: a second, equally valid bf16 computation of the
same function. A mode whose deviation is of the floor's order is within bf16 noise. The math kernel
materialises every attention score, which at 2048² (16k tokens, 30 heads) asks for 30 GiB at once, so
above `MATH_FLOOR_MAX_PIXELS` the second computation uses the memory-efficient kernel instead (the row says
which). Not cuDNN: on the H100 the reference already runs cuDNN at 2048² (a cuDNN "floor" came out 0),
and cuDNN refuses the VAE's one 512-wide head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from zturbo.checkpoints.layout import ModelPaths
from zturbo.engine import Engine
from zturbo.generate import run_request
from zturbo.models.denoiser import compute_description
from zturbo.request import GenerationRequest
from zturbo.runtime.compile import SPEED_MODES, GraphedDiT, SpeedOptions, accelerate, accelerate_vae

# Benchmark system names → the speed modes they measure (zturbo-fp8: bf16 file quantized to fp8 on load,
# row-wise scaled fp8 GEMMs; opt-in and lossy, its guard says by how much). zturbo-fp16 forces the
# fp16-safe DiT path (`--dtype fp16`: what GPUs without bf16 run; the text encoder and VAE stay bf16 on a
# bf16 GPU, so the rows isolate the DiT), zturbo-fp32 the fp32 DiT (`--dtype fp32`, everything fp32),
# zturbo-nobf16 all of a GPU without bf16's dtypes (`--dtype auto` there: fp16-safe DiT, fp32 VAE).
ZTURBO_SYSTEMS = {
    "zturbo": ("reference", "eager"),
    "zturbo-compiled": ("compile", "max"),
    "zturbo-fp8": ("compile", "max"),
    "zturbo-cache": ("compile",),  # + the opt-in step cache at --step-cache's threshold
    "zturbo-fp16": ("eager", "compile", "max"),
    "zturbo-fp32": ("eager", "max"),
    "zturbo-nobf16": ("eager", "max"),
}
MATH_FLOOR_MAX_PIXELS = 2 * 1024 * 1024  # per image: its scores grow with the square of the tokens
FP8_SYSTEMS = {"zturbo-fp8": "fp8_e4m3fn_fast"}
# system → (EngineSettings dtype, bf16: None asks the GPU, False acts as one without bf16)
DTYPE_SYSTEMS = {
    "zturbo-fp16": ("fp16", None),
    "zturbo-fp32": ("fp32", None),
    "zturbo-nobf16": ("auto", False),
}


def system_weight_dtype(system: str) -> str:
    """The DiT's load-time weight dtype for a system name (UNETLoader's weight_dtype)."""
    return FP8_SYSTEMS.get(system, "default")


def system_dtype(system: str) -> tuple[str, bool | None]:
    """(engine dtype, bf16 override) for a system name: bf16 unless the system is about another dtype."""
    return DTYPE_SYSTEMS.get(system, ("bf16", None))


def zturbo_modes(system: str) -> tuple[str, ...]:
    """Modes of a system name: the groups above, or `zturbo-<mode>` for one mode."""
    if system in ZTURBO_SYSTEMS:
        return ZTURBO_SYSTEMS[system]
    mode = system.removeprefix("zturbo-")
    if mode not in SPEED_MODES:
        raise ValueError(
            f"unknown system {system!r}: use {', '.join(ZTURBO_SYSTEMS)} or zturbo-<{'|'.join(SPEED_MODES)}>"
        )
    return (mode,)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR of images in [0, 1]; None when identical."""
    mse = float((a.float() - b.float()).pow(2).mean())
    return None if mse == 0 else round(10 * math.log10(1.0 / mse), 2)


@dataclass(frozen=True)
class GuardReference:
    latents: torch.Tensor
    images: torch.Tensor
    floor_rel_err: float
    floor_psnr_db: float | None
    floor_kernel: str


def guard_reference(engine: Engine, paths: ModelPaths, request: GenerationRequest) -> GuardReference:
    """The reference result for `request` and the noise floor (must run on the reference-mode engine)."""
    reference = run_request(engine, paths, request)
    small = request.width * request.height <= MATH_FLOOR_MAX_PIXELS
    kernel = SDPBackend.MATH if small else SDPBackend.EFFICIENT_ATTENTION
    with sdpa_kernel([kernel, SDPBackend.MATH]):  # math: only where the efficient kernel refuses
        other = run_request(engine, paths, request)
    return GuardReference(
        reference.latents,
        reference.images,
        rel_error(other.latents, reference.latents),
        psnr_db(other.images, reference.images),
        kernel.name.lower(),
    )


def quality(engine: Engine, paths: ModelPaths, request: GenerationRequest, ref: GuardReference) -> dict:
    """This engine's result (its speed mode and weight dtype) against the bf16 reference."""
    result = run_request(engine, paths, request)
    return {
        "latent_rel_err_vs_bf16_reference": rel_error(result.latents, ref.latents),
        "psnr_db_vs_bf16_reference": psnr_db(result.images, ref.images),
        "noise_floor_latent_rel_err": ref.floor_rel_err,
        "noise_floor_psnr_db": ref.floor_psnr_db,
        "noise_floor_attention_kernel": ref.floor_kernel,
    }


def set_speed(
    engine: Engine,
    paths: ModelPaths,
    mode: str,
    cache_dir: Path | None,
    weight_dtype: str,
    step_cache: float = 0.0,
) -> dict:
    """Switch the engine's loaded DiT to `mode` (same weights); returns facts for the row's `extra`."""
    model = engine.load_dit(paths.dit, weight_dtype)
    options = SpeedOptions(mode, cache_dir=cache_dir, step_cache=step_cache)
    model.component.module = accelerate(model.component.module, options)
    accelerate_vae(engine.load_vae(paths.vae).module, options)  # compile modes compile the decoder too
    engine.speed = options  # the step cache is the sampler's: the engine hands it to each denoiser
    return {
        "speed": mode,
        "compile_mode": options.compile_mode if options.compiles else None,
        "step_cache": step_cache,
    }


def graph_facts(engine: Engine, paths: ModelPaths, weight_dtype: str) -> dict:
    """How the DiT computes, and whether the CUDA graphs were captured (a failed capture runs uncaptured
    and says so here)."""
    module = engine.load_dit(paths.dit, weight_dtype).component.module
    facts = {"dit_computes_in": compute_description(module)}
    if not isinstance(module, GraphedDiT):
        return facts
    captured = module.captured_buckets()
    return {**facts, "cuda_graph_buckets": captured[0], "cuda_graph_failed_buckets": captured[1]}


def print_quality(rows: list) -> None:
    print(f"{'system':<20}{'mode':>10}{'latent rel err':>16}{'PSNR dB':>9}{'floor rel':>11}{'floor dB':>9}")
    for r in rows:
        q = r.extra
        if "latent_rel_err_vs_bf16_reference" not in q:
            continue
        print(
            f"{r.system:<20}{r.mode:>10}{q['latent_rel_err_vs_bf16_reference']:>16.2e}"
            f"{_db(q['psnr_db_vs_bf16_reference']):>9}{q['noise_floor_latent_rel_err']:>11.2e}"
            f"{_db(q['noise_floor_psnr_db']):>9}"
        )


def _db(value: float | None) -> str:
    return "same" if value is None else f"{value:.1f}"
