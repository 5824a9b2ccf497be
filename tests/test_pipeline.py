"""Parity with the reference: zturbo equals diffusers' ZImagePipeline on the same tiny weights and noise.

Tolerances (fp32 on CPU): relative error ≤ 1e-4 on the final latents, decoded images within 1/255.
The reference runs from the diffusers folder; zturbo runs from the ComfyUI single files of the same weights.
"""

from __future__ import annotations

import pytest
import torch

from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.generate import run_request
from zturbo.models.vae import process_in
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.sampling.noise import seeded_noise

WIDTH, HEIGHT = 96, 64


@pytest.fixture(scope="module")
def reference_pipeline(tiny_diffusers):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(tiny_diffusers, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def engine():
    return Engine(EngineSettings("cpu", "fp32"))


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("cfg", "negative", "batch"),
    [(1.0, "", 1), (1.0, "", 2), (2.5, "blurry, low quality", 1)],
)
def test_matches_diffusers_pipeline(reference_pipeline, engine, tiny_models_fp32, cfg, negative, batch):
    request = GenerationRequest(
        prompt="a lighthouse at dusk, 灯塔",
        negative=negative,
        width=WIDTH,
        height=HEIGHT,
        steps=4,
        cfg=cfg,
        sampler="euler",
        scheduler="simple",
        seed=1234,
        batch=batch,
    )
    noise = seeded_noise((batch, 16, HEIGHT // 8, WIDTH // 8), request.seed)
    common = dict(
        prompt=request.prompt,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=4,
        guidance_scale=cfg - 1.0,
        num_images_per_prompt=batch,
        latents=noise.clone(),
    )
    if cfg != 1.0:
        common["negative_prompt"] = negative
    ref_latents = reference_pipeline(**common, output_type="latent").images
    ref_images = reference_pipeline(**common, output_type="pt").images.permute(0, 2, 3, 1)

    ours = run_request(engine, resolve_models(tiny_models_fp32), request)
    assert rel_error(process_in(ours.latents), ref_latents) <= 1e-4
    assert (ours.images - ref_images).abs().max() <= 1 / 255
    assert ours.images.std() > 0.01  # not a blank image


def test_seed_changes_the_image(engine, tiny_models_fp32):
    paths = resolve_models(tiny_models_fp32)
    a = run_request(engine, paths, GenerationRequest("a cat", width=32, height=32, steps=2, seed=1))
    b = run_request(engine, paths, GenerationRequest("a cat", width=32, height=32, steps=2, seed=2))
    c = run_request(engine, paths, GenerationRequest("a cat", width=32, height=32, steps=2, seed=1))
    assert not torch.equal(a.latents, b.latents)
    assert torch.equal(a.latents, c.latents)
