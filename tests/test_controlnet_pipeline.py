"""ControlNet parity with diffusers' `ZImageControlNetPipeline` and `ZImageControlNetInpaintPipeline`.

Same tiny weights (DiT, text encoder, VAE from the same seed in ComfyUI single files for zturbo and a
diffusers folder for the reference; the ControlNet file loaded into diffusers' `ZImageControlNetModel`
for the reference), same noise, same sigmas (euler, `simple` at shift 3 = the pipeline's default
schedule), same control images. zturbo runs with `refiner_to_base=False` (diffusers' semantics, see
zturbo.models.controlnet; the default differs for 2.x by design and is checked in
tests/models/test_controlnet_dit.py).

Tolerances (fp32, CPU): relative error ≤ 1e-4 on the final latents (as tests/test_pipeline.py: the DiT
differs by reordered fp32 rounding, ~5e-7 a forward, over 4 steps), decoded images within 1/255.
"""

from __future__ import annotations

import pytest
import torch

from zturbo.checkpoints.controlnet import read_controlnet
from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.models.vae import process_in
from zturbo.runtime.settings import EngineSettings
from zturbo.sampling.noise import seeded_noise
from zturbo.testing.controlnet_files import CONTROL_MODELS, RELEASES, write_controlnet
from zturbo.testing.synthetic import write_comfy_models, write_diffusers_folder

WIDTH, HEIGHT, STEPS, SEED, STRENGTH = 64, 48, 4, 99, 0.75
PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_models")
    write_comfy_models(root, CONTROL_MODELS, dtype=torch.float32)
    for release in RELEASES:
        write_controlnet(root / "model_patches" / f"{release.replace(' ', '_')}.safetensors", release)
    return root


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    return write_diffusers_folder(tmp_path_factory.mktemp("cn_diffusers") / "Z", CONTROL_MODELS)


@pytest.fixture(scope="module")
def components(diffusers_folder):
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(diffusers_folder, dtype=torch.float32).components


def reference_controlnet(path):
    from diffusers import ZImageControlNetModel

    info = read_controlnet(path)
    model = ZImageControlNetModel(**info.spec.diffusers_kwargs(CONTROL_MODELS.dit.n_layers))
    model.load_state_dict(info.state_dict)  # as diffusers' converter: 2.0's unused refiner dropped
    return model.eval()


def images(seed: int):
    """An IMAGE in [0, 1] on a 1/255 grid (so 2x − 1 is exact) and its diffusers form in [−1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, HEIGHT, WIDTH, 3), generator=gen).float() / 255
    return image, image.permute(0, 3, 1, 2) * 2 - 1


def mask():
    m = torch.zeros(1, HEIGHT, WIDTH)
    m[:, 8:40, 16:48] = 1.0  # repaint the middle
    return m


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


def run_zturbo(models, release, cfg, *, control=True, inpaint=False):
    engine = Engine(EngineSettings("cpu", "fp32"))
    paths = resolve_models(models)
    model, clip, vae = engine.load_all(paths)
    patch = engine.load_controlnet(models / "model_patches" / f"{release.replace(' ', '_')}.safetensors")
    extra = {"inpaint_image": images(2)[0], "mask": mask()} if inpaint else {}
    model = engine.apply_controlnet(
        model, patch, vae, STRENGTH, images(1)[0] if control else None, refiner_to_base=False, **extra
    )
    positive = engine.encode_text(clip, PROMPT)
    negative = engine.encode_text(clip, "blurry") if cfg != 1 else None
    empty = torch.zeros(1, 16, HEIGHT // 8, WIDTH // 8)
    latents = engine.sample(
        model,
        positive,
        negative,
        empty,
        seed=SEED,
        steps=STEPS,
        cfg=cfg,
        sampler_name="euler",
        scheduler="simple",
    )
    return process_in(latents), engine.decode(vae, latents)


def run_diffusers(components, models, release, cfg, *, control=True, inpaint=False):
    from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetPipeline

    net = reference_controlnet(models / "model_patches" / f"{release.replace(' ', '_')}.safetensors")
    cls = ZImageControlNetInpaintPipeline if inpaint else ZImageControlNetPipeline
    pipe = cls(**components, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        prompt=PROMPT,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=cfg - 1.0,
        control_image=images(1)[1],
        controlnet_conditioning_scale=STRENGTH,
        latents=seeded_noise((1, 16, HEIGHT // 8, WIDTH // 8), SEED),
    )
    if cfg != 1:
        kwargs["negative_prompt"] = "blurry"
    if inpaint:
        kwargs.update(image=images(2)[1], mask_image=mask()[:, None])
    latents = pipe(**kwargs, output_type="latent").images
    pictures = pipe(**kwargs, output_type="pt").images.permute(0, 2, 3, 1)
    return latents, pictures


CASES = [(r, 1.0) for r in RELEASES] + [("2.1", 2.5)]


@pytest.mark.parametrize(("release", "cfg"), CASES, ids=[f"{r}-cfg{c}" for r, c in CASES])
def test_controlnet_matches_diffusers_pipeline(models, components, release, cfg):
    ours, our_images = run_zturbo(models, release, cfg)
    ref, ref_images = run_diffusers(components, models, release, cfg)
    assert rel_error(ours, ref) <= 1e-4
    assert (our_images - ref_images).abs().max() <= 1 / 255


@pytest.mark.parametrize("release", ["2.0", "2.1", "2.1 Lite"])
def test_inpaint_matches_diffusers_inpaint_pipeline(models, components, release):
    ours, our_images = run_zturbo(models, release, 1.0, inpaint=True)
    ref, ref_images = run_diffusers(components, models, release, 1.0, inpaint=True)
    assert rel_error(ours, ref) <= 1e-4
    assert (our_images - ref_images).abs().max() <= 1 / 255


def test_control_changes_the_image(models):
    with_control, _ = run_zturbo(models, "2.1", 1.0)
    inpaint_only, _ = run_zturbo(models, "2.1", 1.0, control=False, inpaint=True)
    assert rel_error(inpaint_only, with_control) > 1e-3


def sample_with(models, settings, release="2.1", **apply):
    engine = Engine(settings)
    model, clip, vae = engine.load_all(resolve_models(models))
    patch = engine.load_controlnet(models / "model_patches" / f"{release.replace(' ', '_')}.safetensors")
    model = engine.apply_controlnet(model, patch, vae, STRENGTH, images(1)[0], **apply)
    empty = torch.zeros(1, 16, HEIGHT // 8, WIDTH // 8)
    out = engine.sample(
        model, engine.encode_text(clip, PROMPT), None, empty, seed=SEED, steps=2, cfg=1.0,
        sampler_name="euler", scheduler="simple",
    )  # fmt: skip
    return out, patch


def test_speed_reference_and_streamed_blocks(models):
    """`reference` runs diffusers' ControlNet model (diffusers' semantics); a streamed plan streams the
    ControlNet's blocks too (two slots of their own) and computes exactly what the resident run does."""
    from zturbo.control import control_blocks
    from zturbo.runtime.memory import MemoryPlan

    eager, _ = sample_with(models, EngineSettings("cpu", "fp32"), refiner_to_base=False)
    reference, patch = sample_with(models, EngineSettings("cpu", "fp32", speed="reference"))
    assert type(patch.module).__name__ == "ZImageControlNetModel"
    assert rel_error(reference, eager) <= 1e-4
    resident, _ = sample_with(models, EngineSettings("cpu", "fp32"))
    plan = MemoryPlan(level="dit-streamed-all", text_encoder="streamed", dit="streamed", vae_tiled=False)
    streamed, patch = sample_with(models, EngineSettings("cpu", "fp32", plan=plan))
    assert patch.module.__dict__.get("_zturbo_streamer") is not None
    assert len(patch.module.__dict__["_zturbo_streamer"].order) == len(control_blocks(patch.module))
    assert torch.equal(streamed, resident)
