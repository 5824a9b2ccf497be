"""The fp16-safe path through the engine with what small GPUs use: streamed DiT blocks (the small-VRAM
plans), LoRAs merged into fp16 weights, and a GGUF DiT with a LoRA side path.

Models: the tiny ComfyUI files with the overflow-prone DiT (`zturbo.testing.overflow`), where plain
fp16 gives inf. Tolerance against the fp32 engine on the same files: 5e-3 relative on the latents
after 3 sampling steps (measured ~2e-4 with and without a LoRA, GGUF too; the bf16 engine lands at
~2.4e-2 on the same files). Streamed and resident compute the same ops on the same bytes: bit-identical.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.generate import run_request
from zturbo.request import GenerationRequest
from zturbo.runtime.memory import MemoryPlan
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.lora_files import block_modules, dit_shapes, random_factors, write_lora
from zturbo.testing.overflow import write_overflow_prone_models
from zturbo.testing.synthetic_quant import gguf_dit_from

REQUEST = GenerationRequest("a lighthouse", width=32, height=32, steps=3, sampler="euler", seed=5)
FP16, FP32 = EngineSettings("cpu", "fp16"), EngineSettings("cpu", "fp32")
STREAMED = MemoryPlan(
    level="dit-streamed", text_encoder="streamed", dit="streamed", dit_resident_blocks=1, vae_tiled=True
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("overflow_models")
    write_overflow_prone_models(root)
    return resolve_models(root)


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    modules = block_modules(("layers",), (0, 1)) + ["noise_refiner.0.attention.to_q"]
    factors = random_factors(dit_shapes(), modules, rank=4, alpha=2.0, seed=1)
    return write_lora(tmp_path_factory.mktemp("lora") / "a.safetensors", factors, "diffusers")


def latents(engine: Engine, paths, lora_path=None, strength: float = 0.8) -> torch.Tensor:
    model = engine.load_dit(paths.dit)
    if lora_path is not None:
        model, _ = engine.load_lora(model, None, lora_path, strength)
    clip = engine.load_text_encoder(paths.text_encoder)
    positive = engine.encode_text(clip, REQUEST.prompt)
    empty = torch.zeros(1, 16, REQUEST.height // 8, REQUEST.width // 8)
    out = engine.sample(
        model, positive, None, empty, seed=REQUEST.seed, steps=REQUEST.steps, cfg=1.0,
        sampler_name=REQUEST.sampler, scheduler=REQUEST.scheduler,
    )  # fmt: skip
    assert torch.isfinite(out).all()
    return out


def test_streamed_plan_equals_resident_on_the_fp16_safe_path(models):
    resident = run_request(Engine(FP16), models, REQUEST)
    streamed = run_request(Engine(FP16.replace(plan=STREAMED)), models, REQUEST)
    assert torch.equal(streamed.latents, resident.latents)
    assert torch.isfinite(streamed.images).all()


def test_lora_merged_into_fp16_weights(models, lora):
    got = latents(Engine(FP16), models, lora)
    expected = latents(Engine(FP32), models, lora)
    base = latents(Engine(FP16), models)
    assert rel(got, expected) <= 5e-3
    assert rel(got, base) > 10 * rel(got, expected)  # the LoRA did something, far above the rounding


def test_gguf_with_a_lora_side_path(models, lora, tmp_path):
    paths = dataclasses.replace(models, dit=gguf_dit_from(models.dit, tmp_path / "dit.gguf", Q.Q8_0))
    engine = Engine(FP16)
    got = latents(engine, paths, lora)
    assert engine.load_dit(paths.dit).transformer.precision == "fp16"
    expected = latents(Engine(FP32), paths, lora)
    assert rel(got, expected) <= 5e-3
