"""Parity with the reference for image inputs: zturbo's img2img and inpainting equal diffusers'
ZImageImg2ImgPipeline and ZImageInpaintPipeline on the same tiny weights, noise and sigmas.

What is held equal, and how:
- Encoding: diffusers *samples* the latent distribution (`retrieve_latents(..., sample_mode="sample")`,
  with the pipeline's generator); ComfyUI and zturbo take its *mode*. The reference is patched to take
  the mode too, which also leaves its CPU generator for the starting noise alone, so that noise is
  `torch.randn(shape, generator=manual_seed(seed))`, zturbo's `seeded_noise`.
- Schedule: zturbo `--steps S --denoise D` runs the last S+1 sigmas of an int(S/D)-step schedule
  (ComfyUI's KSampler). diffusers' `strength` s runs `num_inference_steps` N from index int(N − N·s), so
  N = int(S/D), s = S/N is the same schedule. Here S=3, D=0.6 → N=5, s=0.6 (N·s = 3.0 exactly), and
  N=4/s=1 for full-strength inpainting; ComfyUI's `simple` sigmas equal diffusers' linspace for N | 1000.
- Inpainting: a 0/1 mask on the 16-pixel grid, so ComfyUI's bilinear and diffusers' nearest resizing to
  latent size agree; zturbo's per-call blend (KSamplerX0Inpaint) and diffusers' per-step re-noising of
  the known region are then the same Euler trajectory.

Tolerances, fp32 on CPU, as for text to image (tests/test_pipeline.py): relative error ≤ 1e-4 on the
final latents (the only differences are float rounding: shift computed in float32 vs float64, and the
blend's different operation order), decoded images within 1/255. The unmasked pixels of an inpainted
PNG equal the input's exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.generate import run_request, save_generated
from zturbo.models.vae import process_in
from zturbo.output.metadata import ModelFiles
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings

WIDTH, HEIGHT = 96, 64
SEED = 4321
PROMPT = "a harbour at dawn, 港口"
MASK_BOX = (32, 16, 80, 48)  # x0, y0, x1, y1: on the 16-pixel grid


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def report(what: str, latents, ref_latents, images, ref_images) -> None:
    """The measured errors, for the log (pytest -s)."""
    print(
        f"\n{what}: latents max abs {(latents - ref_latents).abs().max():.2e}, rel {rel_error(latents, ref_latents):.2e}; "
        f"images max abs {(images - ref_images).abs().max():.2e}"
    )


@pytest.fixture(scope="module")
def engine():
    return Engine(EngineSettings("cpu", "fp32"))


@pytest.fixture(scope="module")
def init_png(tmp_path_factory) -> Path:
    """A smooth picture with some texture (what a VAE sees in a photo), 96×64."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rng = np.random.default_rng(7)
    rgb = np.stack([x / WIDTH * 255, y / HEIGHT * 255, 128 + 60 * np.sin(x / 7.0)], -1)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("init") / "harbour.png"
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def mask_png(init_png: Path) -> Path:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    x0, y0, x1, y1 = MASK_BOX
    mask[y0:y1, x0:x1] = 255
    path = init_png.with_name("harbour-mask.png")
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture
def mode_encoding(monkeypatch):
    """The reference takes the latent distribution's mode, as ComfyUI and zturbo do."""
    from diffusers.pipelines.z_image import pipeline_z_image_img2img, pipeline_z_image_inpaint

    def mode(encoder_output, generator=None, sample_mode="sample"):
        return encoder_output.latent_dist.mode()

    for module in (pipeline_z_image_img2img, pipeline_z_image_inpaint):
        monkeypatch.setattr(module, "retrieve_latents", mode)


def reference(pipeline_cls, tiny_diffusers: Path, **kwargs):
    pipe = pipeline_cls.from_pretrained(tiny_diffusers, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    common = dict(prompt=PROMPT, height=HEIGHT, width=WIDTH, guidance_scale=0.0, **kwargs)
    latents = pipe(**common, generator=torch.Generator().manual_seed(SEED), output_type="latent").images
    images = pipe(**common, generator=torch.Generator().manual_seed(SEED), output_type="pt").images
    return latents, images.permute(0, 2, 3, 1)


def ours(engine, models: Path, **fields) -> object:
    request = GenerationRequest(
        prompt=PROMPT, width=WIDTH, height=HEIGHT, sampler="euler", scheduler="simple", seed=SEED, **fields
    )
    return run_request(engine, resolve_models(models), request)


def test_img2img_matches_diffusers(engine, tiny_models_fp32, tiny_diffusers, init_png, mode_encoding):
    from diffusers import ZImageImg2ImgPipeline

    with Image.open(init_png) as img:
        ref_latents, ref_images = reference(
            ZImageImg2ImgPipeline, tiny_diffusers, image=img.copy(), num_inference_steps=5, strength=0.6
        )
    result = ours(engine, tiny_models_fp32, image=str(init_png), steps=3, denoise=0.6)
    report("img2img", process_in(result.latents), ref_latents, result.images, ref_images)
    assert rel_error(process_in(result.latents), ref_latents) <= 1e-4
    assert (result.images - ref_images).abs().max() <= 1 / 255
    assert result.images.std() > 0.01


@pytest.mark.parametrize(("steps", "denoise", "n", "strength"), [(4, 1.0, 4, 1.0), (3, 0.6, 5, 0.6)])
def test_inpaint_matches_diffusers(
    engine, tiny_models_fp32, tiny_diffusers, init_png, mask_png, mode_encoding, tmp_path, steps, denoise, n, strength
):
    from diffusers import ZImageInpaintPipeline

    with Image.open(init_png) as img, Image.open(mask_png) as mask:
        ref_latents, ref_images = reference(
            ZImageInpaintPipeline, tiny_diffusers, image=img.copy(), mask_image=mask.copy(),
            num_inference_steps=n, strength=strength,
        )  # fmt: skip
    result = ours(
        engine, tiny_models_fp32, image=str(init_png), mask=str(mask_png), steps=steps, denoise=denoise,
        mask_grow=0, mask_blur=0,
    )  # fmt: skip
    x0, y0, x1, y1 = MASK_BOX
    inside = (slice(None), slice(y0, y1), slice(x0, x1))
    report(f"inpaint s={strength}", process_in(result.latents), ref_latents, result.images[inside], ref_images[inside])
    assert rel_error(process_in(result.latents), ref_latents) <= 1e-4
    inside = (result.images - ref_images)[:, y0:y1, x0:x1]
    assert inside.abs().max() <= 1 / 255  # the repainted area is the reference's decode

    files = ModelFiles("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors")
    (saved,) = save_generated(result, files, tmp_path)
    written = np.asarray(Image.open(saved).convert("RGB")).astype(int)
    original = np.asarray(Image.open(init_png).convert("RGB")).astype(int)
    keep = np.ones((HEIGHT, WIDTH), bool)
    keep[y0:y1, x0:x1] = False
    assert (written[keep] == original[keep]).all(), "unmasked pixels must come back exactly"
    assert np.abs(written[~keep] - original[~keep]).mean() > 1, "the masked area was repainted"
