"""Text to image, end to end: request → plan → load → encode → sample → decode → save."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.hashing import short_hash
from zturbo.checkpoints.layout import ModelPaths, loader_name
from zturbo.output.metadata import ModelFiles, api_graph, parameters_text
from zturbo.output.png import next_counter_path, save_png
from zturbo.pipeline import Engine, Progress
from zturbo.request import GenerationRequest
from zturbo.runtime.memory import Workload

LATENT_CHANNELS = 16


@dataclass(frozen=True)
class Generated:
    images: torch.Tensor  # (B, H, W, 3) in [0, 1]
    latents: torch.Tensor  # raw VAE space
    request: GenerationRequest


def run_request(
    engine: Engine,
    paths: ModelPaths,
    request: GenerationRequest,
    progress: Progress | None = None,
    *,
    weight_dtype: str = "default",
) -> Generated:
    """`weight_dtype` is UNETLoader's choice ("default" or an fp8 type that quantizes on load)."""
    request.validate(engine.sampler_names(), engine.scheduler_names())
    engine.prepare(paths, Workload(request.width, request.height, request.batch, request.cfg), weight_dtype)
    model, clip, vae = engine.load_all(paths, weight_dtype)
    model = engine.with_shift(model, request.shift)
    positive = engine.encode_text(clip, request.prompt)
    negative = engine.encode_text(clip, request.negative) if request.cfg != 1.0 else None
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
    graph = api_graph(result.request, files, filename_prefix=prefix)
    saved = []
    for index, image in enumerate(result.images):
        text = {
            "parameters": parameters_text(result.request, files, batch_index=index),
            "prompt": json.dumps(graph, ensure_ascii=False),
        }
        saved.append(save_png(image, next_counter_path(out_dir, prefix), text))
    return saved
