"""Text to image, end to end: request → plan → load → encode → sample → decode → save."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.hashing import short_hash
from zturbo.checkpoints.layout import ModelPaths, loader_name
from zturbo.control import ControlRequest, apply_request
from zturbo.engine import Engine
from zturbo.models.vae import LATENT_CHANNELS
from zturbo.output.metadata import ModelFiles, api_graph, parameters_text
from zturbo.output.naming import SAVE_IMAGE_PATTERN, save_target, write_numbered
from zturbo.output.png import save_png
from zturbo.progress import ProgressFn
from zturbo.request import GenerationRequest
from zturbo.runtime.memory import Workload
from zturbo.sampling.samplers import UNCOND_SAMPLERS, evaluates_negative


@dataclass(frozen=True)
class Generated:
    images: torch.Tensor  # (B, H, W, 3) in [0, 1]
    latents: torch.Tensor  # raw VAE space
    request: GenerationRequest


def workload_of(request: GenerationRequest) -> Workload:
    """What the memory plan must fit for `request` (CFG++ samplers run the negative even at cfg 1)."""
    cfg_pp = request.sampler in UNCOND_SAMPLERS
    return Workload(request.width, request.height, request.batch, request.cfg, uncond_at_cfg1=cfg_pp)


def run_request(
    engine: Engine,
    paths: ModelPaths,
    request: GenerationRequest,
    progress: ProgressFn | None = None,
    control: ControlRequest | None = None,
    models_dir: Path | None = None,
) -> Generated:
    """The DiT loads with the engine's `weight_dtype` setting ("default", or an fp8 type that
    quantizes on load, as UNETLoader's choice does). `control`: a ControlNet (zturbo.control)."""
    request.validate(engine.sampler_names(), engine.scheduler_names())
    engine.prepare(paths, workload_of(request))
    model, clip, vae = engine.load_all(paths, engine.settings.weight_dtype)
    model = engine.with_shift(model, request.shift)
    if control is not None:
        model = apply_request(engine, model, vae, control, models_dir)
    positive = engine.encode_text(clip, request.prompt)
    negative = None
    if evaluates_negative(request.sampler, request.cfg):  # CFG++ samplers read it even at cfg 1
        negative = engine.encode_text(clip, request.negative)
    empty = torch.zeros(request.batch, LATENT_CHANNELS, request.height // 8, request.width // 8)
    latents = engine.sample(
        model,
        positive,
        negative,
        empty,
        seed=request.seed,
        steps=request.steps,
        cfg=request.cfg,
        sampler_name=request.sampler,
        scheduler=request.scheduler,
        denoise=request.denoise,
        progress=progress,
    )
    return Generated(engine.decode(vae, latents), latents, request)


def model_files(paths: ModelPaths, models_dir: Path | None, weight_dtype: str = "default") -> ModelFiles:
    """Names as ComfyUI's loaders list them (relative to the models subfolder), short hashes, and the
    load-time weight dtype (so the PNG's graph quantizes the same way)."""
    cache = (models_dir or paths.dit.parent) / ".zturbo"
    return ModelFiles(
        dit=loader_name(models_dir, DIT, paths.dit),
        text_encoder=loader_name(models_dir, TEXT_ENCODER, paths.text_encoder),
        vae=loader_name(models_dir, VAE, paths.vae),
        dit_hash=short_hash(paths.dit, cache),
        text_encoder_hash=short_hash(paths.text_encoder, cache),
        vae_hash=short_hash(paths.vae, cache),
        dit_weight_dtype=weight_dtype,
    )


def save_generated(result: Generated, files: ModelFiles, out_dir: Path, prefix: str = "zturbo") -> list[Path]:
    """Save as the embedded graph's SaveImage would: `{prefix}_{counter:05}_.png`, never overwriting."""
    graph = api_graph(result.request, files, filename_prefix=prefix)
    prompt = json.dumps(graph, ensure_ascii=False)

    def write(index: int, image: torch.Tensor, path: Path) -> None:
        parameters = parameters_text(result.request, files, batch_index=index)
        save_png(image, path, {"parameters": parameters, "prompt": prompt})

    height, width = result.images.shape[1:3]
    target = save_target(out_dir, prefix, int(width), int(height))
    return write_numbered(result.images, target, SAVE_IMAGE_PATTERN, write)
