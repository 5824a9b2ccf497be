"""Device/dtype choice: fp16 is refused for the DiT, NaNs are reported with the step they appeared at."""

from __future__ import annotations

import pytest
import torch

from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.errors import GenerationError, InputError
from zturbo.generate import run_request
from zturbo.request import GenerationRequest
from zturbo.runtime.device import Placement
from zturbo.runtime.settings import EngineSettings


def test_cpu_defaults_to_fp32_and_gpu_to_bf16():
    assert Placement(torch.device("cpu")).dit_dtype() == torch.float32
    assert Placement(torch.device("cuda")).dit_dtype() == torch.bfloat16
    assert Placement(torch.device("cpu"), "bf16").dit_dtype() == torch.bfloat16


def test_fp16_is_refused_for_the_diffusion_model():
    with pytest.raises(InputError, match="fp16 is not supported for the Z-Image diffusion model.*black"):
        Placement(torch.device("cpu"), "fp16").dit_dtype()
    # the text encoder falls back to bf16 rather than fp16
    assert Placement(torch.device("cpu"), "fp16").text_encoder_dtype(torch.device("cpu")) == torch.bfloat16


def test_bad_choices_are_named():
    with pytest.raises(InputError, match="device must be one of auto, cuda, mps, cpu"):
        Placement.create("tpu")
    with pytest.raises(InputError, match="dtype must be one of"):
        Placement.create("cpu", "int4")


def test_nan_latents_are_reported_with_the_step(tiny_models):
    engine = Engine(EngineSettings("cpu", "fp32"))
    paths = resolve_models(tiny_models)
    model = engine.load_dit(paths.dit)
    calls = {"n": 0}
    original = model.transformer.forward

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        if calls["n"] == 3:
            out[0][0].fill_(float("nan"))
        return out

    model.transformer.forward = poisoned
    try:
        request = GenerationRequest("a cat", width=32, height=32, steps=4, sampler="euler")
        with pytest.raises(GenerationError, match=r"NaN/inf values at model call 3 \(sigma 0\.7500\)"):
            run_request(engine, paths, request)
    finally:
        del model.transformer.forward
