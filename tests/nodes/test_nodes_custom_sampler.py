"""Custom sampling nodes against ComfyUI's behaviour (comfy_extras/nodes_custom_sampler.py, nodes_cfg.py).

Schedules and sigma edits are checked on values; sampling runs on the real engine with tiny fp32
models, where SamplerCustomAdvanced must give exactly what KSampler gives for the same settings (one
sampling core), and the denoised output must be the last step's estimate.
"""

from __future__ import annotations

import pytest
import torch

from zturbo.engine import Engine, ZImageModel, start_noise
from zturbo.models.denoiser import CFGNorm, ZImageDenoiser, guided_estimate
from zturbo.nodes import custom_sampler as cs
from zturbo.nodes.engine_api import Guider, Noise, Sampler
from zturbo.nodes.sampling import KSampler
from zturbo.runtime.settings import EngineSettings
from zturbo.sampling.noise import seeded_noise
from zturbo.sampling.schedules import get_sigmas
from zturbo.testing.synthetic import COMFY_FILES

SIMPLE_8 = [1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0.0]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineSettings("cpu", "fp32"))


@pytest.fixture(scope="module")
def models(engine, tiny_models_fp32):
    model = engine.load_dit(tiny_models_fp32 / COMFY_FILES["dit"])
    clip = engine.load_text_encoder(tiny_models_fp32 / COMFY_FILES["text_encoder"])
    return model, engine.encode_text(clip, "a red fox"), engine.encode_text(clip, "blurry")


@pytest.fixture
def ctx(node_ctx, engine):
    node_ctx.execution.engine = engine
    return node_ctx


def test_basic_scheduler_is_comfyuis_schedule(ctx):
    model = ZImageModel(component=None, shift=3.0)  # type: ignore[arg-type]
    (sigmas,) = cs.BasicScheduler().execute(ctx, model, "simple", 8, 1.0)
    assert sigmas.tolist() == pytest.approx(SIMPLE_8, abs=1e-6)
    (partial,) = cs.BasicScheduler().execute(ctx, model, "simple", 4, 0.5)
    assert torch.equal(partial, get_sigmas("simple", 8, shift=3.0)[-5:])  # int(steps/denoise), last steps+1
    (none,) = cs.BasicScheduler().execute(ctx, model, "karras", 4, 0.0)
    assert none.numel() == 0


def test_split_and_flip_sigmas():
    sigmas = torch.tensor(SIMPLE_8)
    high, low = cs.SplitSigmas().execute(None, sigmas, 3)
    assert high.tolist() == pytest.approx(SIMPLE_8[:4]) and low.tolist() == pytest.approx(SIMPLE_8[3:])
    (flipped,) = cs.FlipSigmas().execute(None, sigmas)
    assert flipped[0] == pytest.approx(0.0001) and flipped[1:].tolist() == pytest.approx(SIMPLE_8[::-1][1:])
    assert sigmas[-1] == 0  # the input is not changed
    assert cs.FlipSigmas().execute(None, torch.zeros(0))[0].numel() == 0


def test_noise_guider_and_sampler_values():
    assert cs.RandomNoise().execute(None, 42) == (Noise(42),)
    assert cs.DisableNoise().execute(None) == (Noise(0, enabled=False),)
    assert cs.CFGGuider().execute(None, "m", "p", "n", 4.0) == (Guider("m", "p", "n", 4.0),)
    assert cs.BasicGuider().execute(None, "m", "p") == (Guider("m", "p", None, 1.0),)
    assert cs.KSamplerSelect().execute(None, "dpmpp_2m") == (Sampler("dpmpp_2m"),)


@pytest.mark.parametrize(("sampler", "cfg"), [("euler", 2.5), ("dpmpp_2m_sde", 1.0)])
def test_sampler_custom_advanced_equals_ksampler(ctx, models, sampler, cfg):
    model, positive, negative = models
    latent = {"samples": torch.zeros(1, 16, 6, 8)}
    (expected,) = KSampler().execute(
        ctx, model, 7, 3, cfg, sampler, "simple", positive, negative, latent, 1.0
    )
    (sigmas,) = cs.BasicScheduler().execute(ctx, model, "simple", 3, 1.0)
    (guider,) = cs.CFGGuider().execute(ctx, model, positive, negative, cfg)
    (noise,) = cs.RandomNoise().execute(ctx, 7)
    out, denoised = cs.SamplerCustomAdvanced().execute(ctx, noise, guider, Sampler(sampler), sigmas, latent)
    assert torch.equal(out["samples"], expected["samples"])
    same, _ = cs.SamplerCustom().execute(
        ctx, model, True, 7, cfg, positive, negative, Sampler(sampler), sigmas, latent
    )
    assert torch.equal(same["samples"], expected["samples"])
    assert denoised["samples"].shape == out["samples"].shape


def test_basic_guider_is_the_positive_alone(ctx, models):
    model, positive, negative = models
    latent = {"samples": torch.zeros(1, 16, 6, 8)}
    sigmas = get_sigmas("simple", 2, shift=3.0)
    basic, _ = cs.SamplerCustomAdvanced().execute(
        ctx, Noise(3), Guider(model, positive), Sampler("euler"), sigmas, latent
    )
    cfg1, _ = cs.SamplerCustomAdvanced().execute(
        ctx, Noise(3), Guider(model, positive, negative, 1.0), Sampler("euler"), sigmas, latent
    )
    assert torch.equal(basic["samples"], cfg1["samples"])  # cfg 1 never evaluates the negative


def test_denoised_output_is_the_last_estimate(ctx, models):
    """One Euler step to sigma 0 lands exactly on the step's denoised estimate."""
    model, positive, _ = models
    latent = {"samples": torch.zeros(1, 16, 6, 8), "batch_index": [0]}
    sigmas = torch.tensor([0.8, 0.0])
    out, denoised = cs.SamplerCustomAdvanced().execute(
        ctx, Noise(5), Guider(model, positive), Sampler("euler"), sigmas, latent
    )
    torch.testing.assert_close(out["samples"], denoised["samples"], rtol=0, atol=1e-5)
    assert out["batch_index"] == [0] and denoised["batch_index"] == [0]
    two, denoised2 = cs.SamplerCustomAdvanced().execute(
        ctx, Noise(5), Guider(model, positive), Sampler("euler"), torch.tensor([0.8, 0.4, 0.0]), latent
    )
    assert not torch.equal(two["samples"], out["samples"]) and denoised2 is not two


def test_no_sigmas_and_no_noise_leave_the_latent(ctx, models):
    model, positive, _ = models
    latent = {"samples": torch.randn(1, 16, 6, 8)}
    out, denoised = cs.SamplerCustomAdvanced().execute(
        ctx, Noise(0, enabled=False), Guider(model, positive), Sampler("euler"), torch.zeros(0), latent
    )
    assert torch.equal(out["samples"], latent["samples"]) and denoised is out


def test_noise_follows_batch_index():
    """ComfyUI's prepare_noise with batch indices: one draw per index up to the largest."""
    shape = (2, 16, 3, 4)
    generator = torch.manual_seed(11)
    draws = [torch.randn((1, *shape[1:]), generator=generator) for _ in range(4)]
    assert torch.equal(start_noise(shape, 11, [3, 1]), torch.cat([draws[3], draws[1]]))
    assert torch.equal(start_noise(shape, 11), seeded_noise(shape, 11))


class Linear(torch.nn.Module):
    """A stand-in transformer (zturbo's batched API): output depends on x and on the caption."""

    batched_api = True

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, caps):
        shift = torch.stack([c.mean() for c in caps]).view(-1, 1, 1, 1)
        return x * self.scale - shift + t.view(-1, 1, 1, 1) * 0.1


def comfy_cfg_norm(x, cond_pred, uncond_pred, cfg, strength, pre_cfg):
    """ComfyUI's CFGNorm, written out from nodes_cfg.py, on ComfyUI's cfg_function arguments."""
    if pre_cfg:
        cond, uncond = x - cond_pred, x - uncond_pred
        comb = uncond + cfg * (cond - uncond)
        cond_norm = torch.linalg.vector_norm(cond, dim=1, keepdim=True)
        comb_norm = torch.linalg.vector_norm(comb, dim=1, keepdim=True)
        rescale = torch.where(
            comb_norm > 0, cond_norm / comb_norm.clamp_min(1e-12), torch.ones_like(comb_norm)
        )
        rescaled = comb * rescale
        rescaled = strength * rescaled + (1.0 - strength) * comb if strength != 1.0 else rescaled
        return x - rescaled
    denoised = uncond_pred + (cond_pred - uncond_pred) * cfg
    scale = (
        torch.norm(cond_pred, dim=1, keepdim=True) / (torch.norm(denoised, dim=1, keepdim=True) + 1e-8)
    ).clamp(0, 1)
    return denoised * scale * strength


@pytest.mark.parametrize(
    ("cfg", "strength", "pre_cfg"), [(3.0, 1.0, False), (3.0, 0.8, False), (4.0, 0.6, True), (1.0, 1.0, True)]
)
def test_cfg_norm_matches_comfyui(cfg, strength, pre_cfg):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4)
    sigma = torch.tensor([0.7, 0.7])
    pos, neg = [torch.full((3, 8), 0.3)], [torch.full((3, 8), -0.2)]
    model = Linear()
    plain = ZImageDenoiser(model, pos, neg, cfg)
    normed = ZImageDenoiser(model, pos, neg, cfg, cfg_norms=(CFGNorm(strength, pre_cfg),))
    with torch.no_grad():
        expected_plain = plain(x, sigma)
        cond_pred = x + 0.7 * model(x, 1 - sigma, pos * 2).float()
        uncond_pred = x + 0.7 * model(x, 1 - sigma, neg * 2).float()
        if cfg == 1.0:
            uncond_pred = torch.zeros_like(cond_pred)  # ComfyUI skips the negative at cfg 1: zeros
        expected = comfy_cfg_norm(x, cond_pred, uncond_pred, cfg, strength, pre_cfg)
        torch.testing.assert_close(normed(x, sigma), expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(expected_plain, expected) or (cfg == 1.0 and strength == 1.0)


def test_cfg_norm_node_stacks_patches(ctx):
    model = ZImageModel(component=None)  # type: ignore[arg-type]
    (once,) = cs.CFGNorm().execute(ctx, model, 0.9)
    (twice,) = cs.CFGNorm().execute(ctx, once, 1.5, True)
    assert model.cfg_norms == () and twice.cfg_norms == (CFGNorm(0.9, False), CFGNorm(1.5, True))
    cond, uncond, x = torch.ones(1, 2, 1, 1), torch.zeros(1, 2, 1, 1), torch.full((1, 2, 1, 1), 2.0)
    # post-CFG patches apply after the (last) pre-CFG combination
    expected = CFGNorm(0.9).after(CFGNorm(1.5, True).combine(x, cond, uncond, 2.0), cond)
    assert torch.equal(guided_estimate(x, cond, uncond, 2.0, twice.cfg_norms), expected)
