"""The NaN/inf watchdog: a non-finite sampling run is retried once with fp32 arithmetic and says so;
a non-finite decode is redone in fp32; no black image is ever returned.

Models: the tiny ComfyUI files with the overflow-prone DiT (`zturbo.testing.overflow`: activations
reach ~2e5), so plain fp16 really overflows here, as the released model does on GPUs without bf16.
"""

from __future__ import annotations

import logging

import pytest
import torch

from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.errors import GenerationError, NonFiniteError
from zturbo.generate import run_request
from zturbo.models.zimage_dit import ZImageDiT
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.overflow import write_overflow_prone_models

REQUEST = GenerationRequest("a lighthouse", width=32, height=32, steps=3, sampler="euler", seed=5)


@pytest.fixture(scope="module")
def overflow_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("overflow_models")
    write_overflow_prone_models(root)
    return resolve_models(root)


def test_fp16_safe_generates_without_the_watchdog(overflow_models, caplog):
    engine = Engine(EngineSettings("cpu", "fp16"))
    with caplog.at_level(logging.WARNING):
        result = run_request(engine, overflow_models, REQUEST)
    assert torch.isfinite(result.latents).all() and result.images.std() > 0
    assert engine.load_dit(overflow_models.dit).transformer.precision == "fp16"
    assert "retrying" not in caplog.text


def test_plain_fp16_is_caught_retried_in_fp32_and_kept_there(overflow_models, caplog):
    engine = Engine(EngineSettings("cpu", "fp16"))
    dit = engine.load_dit(overflow_models.dit).transformer
    assert isinstance(dit, ZImageDiT)
    dit.set_precision("plain")  # what ComfyUI-style fp16 does: overflows on these weights
    with caplog.at_level(logging.WARNING):
        result = run_request(engine, overflow_models, REQUEST)
    assert torch.isfinite(result.latents).all() and result.images.std() > 0
    assert "NaN/inf values at model call 1" in caplog.text and "computing in float16" in caplog.text
    assert "retrying once computing in fp32" in caplog.text
    assert "stays on fp32 arithmetic" in caplog.text
    assert engine.load_dit(overflow_models.dit).transformer.precision == "fp32"
    reference = run_request(Engine(EngineSettings("cpu", "fp32")), overflow_models, REQUEST)
    error = (result.latents - reference.latents).norm() / reference.latents.norm()
    assert error <= 1e-4  # fp32 arithmetic on the same (bf16-exact) weights


def test_the_watchdog_gives_up_when_fp32_does_not_help(overflow_models):
    engine = Engine(EngineSettings("cpu", "bf16"))
    model = engine.load_dit(overflow_models.dit)
    original = model.transformer.forward

    def poisoned(*args, **kwargs):
        return original(*args, **kwargs) * float("nan")

    model.transformer.forward = poisoned
    with pytest.raises(
        NonFiniteError, match=r"computing in fp32 \(bfloat16 weights\), as it did computing in bfloat16"
    ):
        run_request(engine, overflow_models, REQUEST)
    assert model.transformer.precision == "plain"  # restored


def test_a_non_finite_decode_is_redone_in_fp32(overflow_models, caplog):
    engine = Engine(EngineSettings("cpu", "bf16"))
    vae = engine.load_vae(overflow_models.vae).module
    original = vae.decode
    calls = {"n": 0}

    def poisoned_once(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        return (out[0] * float("inf"),) if calls["n"] == 1 else out

    vae.decode = poisoned_once
    with caplog.at_level(logging.WARNING):
        result = run_request(engine, overflow_models, REQUEST)
    assert torch.isfinite(result.images).all() and calls["n"] == 2
    assert "VAE decoded NaN/inf values computing in bfloat16; decoding again in fp32" in caplog.text
    assert next(vae.parameters()).dtype == torch.float32


def test_a_non_finite_fp32_decode_is_an_error(overflow_models):
    engine = Engine(EngineSettings("cpu", "fp32"))
    vae = engine.load_vae(overflow_models.vae).module
    original = vae.decode
    vae.decode = lambda *a, **k: (original(*a, **k)[0] * float("nan"),)
    with pytest.raises(GenerationError, match="VAE decoded NaN/inf values computing in float32"):
        run_request(engine, overflow_models, REQUEST)
