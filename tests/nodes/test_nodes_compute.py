"""Nodes that compute without a model (latents, resizing, sizes) and model nodes' engine calls."""

from __future__ import annotations

import threading

import pytest
import torch

from zturbo.errors import Interrupted, MissingModelError
from zturbo.nodes.base import EngineMissingError
from zturbo.nodes.conditioning import CLIPTextEncode, ConditioningZeroOut
from zturbo.nodes.image import (
    GetImageSize,
    ImageScaleBy,
    ImageScaleToMaxDimension,
    ImageScaleToTotalPixels,
    ResolutionSelector,
)
from zturbo.nodes.latent import EmptyLatentImage, EmptySD3LatentImage, LatentUpscaleBy, VAEDecode, VAEEncode
from zturbo.nodes.loaders import CLIPLoader, UNETLoader, VAELoader
from zturbo.nodes.primitives import PrimitiveBoolean, PrimitiveInt, PrimitiveString
from zturbo.nodes.sampling import KSampler, KSamplerAdvanced, ModelSamplingAuraFlow
from zturbo.resize import bislerp, common_upscale


def test_empty_latents_are_16_channel_zeros(node_ctx):
    (latent,) = EmptySD3LatentImage().execute(node_ctx, 1024, 768, 2)
    assert latent["samples"].shape == (2, 16, 96, 128) and not latent["samples"].any()
    assert EmptyLatentImage().execute(node_ctx, 512, 512, 1)[0]["samples"].shape == (1, 16, 64, 64)


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"])
def test_latent_upscale_by(node_ctx, method):
    latent = {"samples": torch.randn(1, 16, 8, 10), "batch_index": [0]}
    (out,) = LatentUpscaleBy().execute(node_ctx, latent, method, 1.5)
    assert out["samples"].shape == (1, 16, 12, 15) and out["batch_index"] == [0]


def test_bislerp_keeps_constant_fields_and_magnitudes():
    flat = torch.ones(1, 4, 3, 3) * torch.tensor([1.0, 2.0, 0.0, -1.0]).view(1, 4, 1, 1)
    assert torch.allclose(bislerp(flat, 7, 5), torch.ones(1, 4, 5, 7) * flat[:, :, :1, :1], atol=1e-5)
    x = torch.randn(2, 16, 4, 4)
    up = bislerp(x, 8, 8)
    assert (
        up.norm(dim=1).mean()
        > 0.9 * torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear").norm(dim=1).mean()
    )


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
def test_image_scale_by(node_ctx, method):
    image = torch.rand(2, 10, 20, 3)
    (out,) = ImageScaleBy().execute(node_ctx, image, method, 0.5)
    assert out.shape == (2, 5, 10, 3)
    if method != "bicubic":  # bicubic overshoots, unclamped as in ComfyUI
        assert out.min() >= 0 and out.max() <= 1.0 + 1e-5


def test_scale_to_total_pixels_and_max_dimension(node_ctx):
    image = torch.rand(1, 100, 200, 3)
    (out,) = ImageScaleToTotalPixels().execute(node_ctx, image, "bilinear", 0.01, 8)
    assert out.shape[1] % 8 == 0 and out.shape[2] % 8 == 0 and abs(out.shape[1] * out.shape[2] - 10486) < 1500
    assert ImageScaleToMaxDimension().execute(node_ctx, image, "area", 50)[0].shape == (1, 25, 50, 3)
    assert ImageScaleToMaxDimension().execute(node_ctx, torch.rand(1, 9, 9, 3), "area", 4)[0].shape == (
        1,
        4,
        4,
        3,
    )


def test_center_crop_upscale():
    out = common_upscale(torch.rand(1, 3, 10, 20), 10, 10, "nearest-exact", "center")
    assert out.shape == (1, 3, 10, 10)


def test_sizes(node_ctx):
    assert GetImageSize().execute(node_ctx, torch.zeros(3, 7, 11, 3)) == (11, 7, 3)
    assert ResolutionSelector().execute(node_ctx, "1:1 (Square)", 1.0, 8) == (1024, 1024)
    assert ResolutionSelector().execute(node_ctx, "16:9 (Widescreen)", 1.0, 16) == (1360, 768)


def test_primitives(node_ctx):
    assert PrimitiveInt().execute(node_ctx, 5) == (5,)
    assert PrimitiveString().execute(node_ctx, "x") == ("x",)
    assert PrimitiveBoolean().execute(node_ctx, True) == (True,)


class StubEngine:
    """TEST DOUBLE recording how nodes call the engine."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "sample":
                kwargs["progress"](1, 1, None)
                return args[3] + 1
            if name == "decode":
                return torch.zeros(1, 16, 16, 3)
            if name == "encode":
                return torch.zeros(1, 16, 2, 2)
            return {"from": name}

        return call


def test_model_nodes_call_the_engine(node_ctx, context):
    for folder, name in [("unet", "dit.safetensors"), ("clip", "te.safetensors"), ("vae", "ae.sft")]:
        (context.models_dir / folder).mkdir()
        (context.models_dir / folder / name).write_bytes(b"")
    engine = StubEngine()
    context.engine = engine
    assert UNETLoader().execute(node_ctx, "dit.safetensors", "fp8_e4m3fn") == ({"from": "load_dit"},)
    assert engine.calls[-1][1] == (context.models_dir / "unet" / "dit.safetensors", "fp8_e4m3fn")
    CLIPLoader().execute(node_ctx, "te.safetensors", "lumina2", "cpu")
    assert engine.calls[-1][1][1] == "cpu"
    VAELoader().execute(node_ctx, "ae.sft")
    CLIPTextEncode().execute(node_ctx, "clip", "a cat")
    ConditioningZeroOut().execute(node_ctx, "cond")
    ModelSamplingAuraFlow().execute(node_ctx, "model", 3.0)
    assert engine.calls[-1][1] == ("model", 3.0, 1.0)
    latent = {"samples": torch.zeros(1, 16, 2, 2), "noise_mask": "kept"}
    (out,) = KSampler().execute(node_ctx, "m", 5, 8, 1.0, "euler", "simple", "p", "n", latent, 0.75)
    assert out["noise_mask"] == "kept" and torch.equal(out["samples"], torch.ones(1, 16, 2, 2))
    kwargs = engine.calls[-1][2]
    assert {k: kwargs[k] for k in ("seed", "steps", "cfg", "denoise")} == {
        "seed": 5,
        "steps": 8,
        "cfg": 1.0,
        "denoise": 0.75,
    }
    KSamplerAdvanced().execute(
        node_ctx, "m", "disable", 9, 8, 1.0, "euler", "simple", "p", "n", latent, 2, 6, "enable"
    )
    kwargs = engine.calls[-1][2]
    assert (kwargs["add_noise"], kwargs["start_step"], kwargs["end_step"]) == (False, 2, 6)
    assert kwargs["return_with_leftover_noise"] is True
    VAEDecode().execute(node_ctx, latent, "vae")
    VAEEncode().execute(node_ctx, torch.zeros(1, 19, 21, 4), "vae")
    assert engine.calls[-1][1][1].shape == (1, 16, 16, 3)  # cropped to multiples of 8, alpha dropped


def test_model_nodes_explain_what_is_missing(node_ctx, context):
    with pytest.raises(MissingModelError, match="nope.safetensors"):
        UNETLoader().execute(node_ctx, "nope.safetensors")
    with pytest.raises(EngineMissingError, match="needs the model engine"):
        CLIPTextEncode().execute(node_ctx, "clip", "text")


def test_progress_reports_and_doubles_as_an_interrupt_point(node_ctx):
    seen = []
    node_ctx.on_progress = lambda value, maximum, preview: seen.append((value, maximum))
    node_ctx.interrupt = threading.Event()
    node_ctx.progress(1, 4)
    node_ctx.interrupt.set()
    with pytest.raises(Interrupted):
        node_ctx.progress(2, 4)
    assert seen == [(1, 4)]
