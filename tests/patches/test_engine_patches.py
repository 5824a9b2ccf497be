"""LoRAs through the engine's patch seam: merged in place (plain weights, fused rows, streamed blocks),
side paths (GGUF), stacking, strengths, and bit-exact removal.

Tolerances (fp32, CPU):
- "hand-merged twin": the same tiny model with W + s·(α/r)·up@down written into its file by the test,
  generated without any patch. The engine's merged weights differ from the test's by the rounding of
  one fp32 product and sum (≤ 2 ulp of |W| + |ΔW| per weight, ~1e-7 relative); through two sampling
  steps of the tiny model that stays far below 1e-5 relative on the latents (measured ~1e-7), which is
  the bound used. Not bit-exact: the two sides scale the product in a different order.
- removal: bit-exact, because the engine writes back the very bytes it saved.
- GGUF Q8_0 base: the side path computes x·Wᵀ + s·(x·downᵀ)·upᵀ where the twin computes x·(W+ΔW)ᵀ on
  the same dequantized W; the difference is reassociation of fp32 sums (~1e-6 relative per layer), so
  the latents are compared at 1e-4 relative.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import load_file, save_file

from zturbo.checkpoints import keymaps
from zturbo.checkpoints.layout import COMFY_FILES, ModelPaths, resolve_models
from zturbo.engine import Engine
from zturbo.models.slots import WeightSlot
from zturbo.patches import live
from zturbo.request import GenerationRequest
from zturbo.runtime.memory import MemoryPlan
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.lora_files import block_modules, dit_shapes, random_factors, write_lora
from zturbo.testing.synthetic_quant import dequantized_gguf, gguf_dit_from

REQUEST = GenerationRequest("a red fox, 狐狸", width=64, height=48, steps=2, sampler="euler", seed=7)
CPU = EngineSettings("cpu", "fp32")
MODULES = block_modules(("layers",), (0, 1)) + ["noise_refiner.0.attention.to_q", "all_x_embedder.2-1"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def lora_a(tmp_path_factory) -> tuple[Path, dict]:
    factors = random_factors(dit_shapes(), MODULES, rank=4, alpha=2.0, seed=1)
    return write_lora(tmp_path_factory.mktemp("lora") / "a.safetensors", factors, "diffusers"), factors


@pytest.fixture(scope="module")
def lora_b(tmp_path_factory) -> tuple[Path, dict]:
    factors = random_factors(dit_shapes(), block_modules(("layers",), (1,)), rank=2, seed=2)
    return write_lora(tmp_path_factory.mktemp("lora") / "b.safetensors", factors, "kohya"), factors


def hand_merged(models: Path, out: Path, loras: list[tuple[dict, float]]) -> ModelPaths:
    """The tiny models with the LoRAs merged into the DiT file by the test itself."""
    src = models / COMFY_FILES["dit"]
    prefix = "model.diffusion_model."
    state = keymaps.comfy_dit_to_diffusers(
        {k.removeprefix(prefix): v for k, v in load_file(str(src)).items()}
    )
    for factors, strength in loras:
        for module, f in factors.items():
            key = module + ".weight"
            state[key] = state[key] + strength * f.scale * (f.up @ f.down)
    path = out / "merged_dit.safetensors"
    save_file({k: v.contiguous() for k, v in keymaps.diffusers_dit_to_comfy(state).items()}, str(path))
    paths = resolve_models(models)
    return dataclasses.replace(paths, dit=path)


def generate(engine: Engine, paths: ModelPaths, loras: list[tuple[Path, float]] = ()):
    """run_request with LoRAs attached to the MODEL as a LoraLoaderModelOnly chain would."""
    model = engine.load_dit(paths.dit)
    for path, strength in loras:
        model, _ = engine.load_lora(model, None, path, strength)
    clip = engine.load_text_encoder(paths.text_encoder)
    vae = engine.load_vae(paths.vae)
    positive = engine.encode_text(clip, REQUEST.prompt)
    empty = torch.zeros(1, 16, REQUEST.height // 8, REQUEST.width // 8)
    latents = engine.sample(
        model, positive, None, empty, seed=REQUEST.seed, steps=REQUEST.steps, cfg=1.0,
        sampler_name=REQUEST.sampler, scheduler=REQUEST.scheduler,
    )
    return latents, engine.decode(vae, latents)


def snapshot(engine: Engine, paths: ModelPaths) -> dict[str, torch.Tensor]:
    module = engine.load_dit(paths.dit).component.module
    return {k: slot.rows(slot.parameter).clone() for k, slot in live.slots_of(module).items() if slot.parameter is not None}


@pytest.mark.parametrize("speed", ["reference", "eager"])
def test_lora_equals_its_hand_merged_twin(tiny_models_fp32, tmp_path, lora_a, speed):
    path, factors = lora_a
    engine = Engine(CPU.replace(speed=speed))
    latents, images = generate(engine, resolve_models(tiny_models_fp32), [(path, 0.8)])
    twin = hand_merged(tiny_models_fp32, tmp_path, [(factors, 0.8)])
    expected, expected_images = generate(Engine(CPU.replace(speed=speed)), twin)
    assert rel(latents, expected) < 1e-5
    assert (images - expected_images).abs().max() < 1e-4
    base, _ = generate(Engine(CPU.replace(speed=speed)), resolve_models(tiny_models_fp32))
    assert rel(latents, base) > 1e-3  # the LoRA did something


def test_two_loras_stack_and_negative_strength_works(tiny_models_fp32, tmp_path, lora_a, lora_b):
    (a, fa), (b, fb) = lora_a, lora_b
    latents, _ = generate(Engine(CPU), resolve_models(tiny_models_fp32), [(a, 0.5), (b, -1.0)])
    twin = hand_merged(tiny_models_fp32, tmp_path, [(fa, 0.5), (fb, -1.0)])
    expected, _ = generate(Engine(CPU), twin)
    assert rel(latents, expected) < 1e-5


def test_removing_and_reweighting_restores_the_base_bit_for_bit(tiny_models_fp32, lora_a, lora_b):
    paths = resolve_models(tiny_models_fp32)
    engine = Engine(CPU)
    base_weights = snapshot(engine, paths)
    base, _ = generate(engine, paths)
    generate(engine, paths, [(lora_a[0], 1.0)])
    changed = snapshot(engine, paths)
    assert not torch.equal(changed["layers.0.attention.to_q.weight"], base_weights["layers.0.attention.to_q.weight"])
    generate(engine, paths, [(lora_a[0], 0.3), (lora_b[0], 1.0)])  # re-weighted, another added
    again, _ = generate(engine, paths)  # no LoRA: the base, as if never patched
    assert torch.equal(again, base)
    after = snapshot(engine, paths)
    assert all(torch.equal(after[k], v) for k, v in base_weights.items())
    state = live.patch_state(engine.load_dit(paths.dit).component)
    assert state.backups == {} and state.wrapped == []  # nothing kept once the LoRA is gone


def test_strength_zero_is_the_base(tiny_models_fp32, lora_a):
    paths = resolve_models(tiny_models_fp32)
    engine = Engine(CPU)
    base, _ = generate(engine, paths)
    zero, _ = generate(engine, paths, [(lora_a[0], 0.0)])
    assert torch.equal(zero, base)


def test_a_lora_on_to_q_touches_only_its_rows_of_the_fused_qkv(tiny_models_fp32, tmp_path):
    factors = random_factors(dit_shapes(), ["layers.0.attention.to_q"], rank=2, seed=3)
    path = write_lora(tmp_path / "q.safetensors", factors, "diffusers")
    paths = resolve_models(tiny_models_fp32)
    engine = Engine(CPU)
    dit = engine.load_dit(paths.dit).component.module
    qkv = dit.layers[0].qkv.weight.detach().clone()
    generate(engine, paths, [(path, 1.0)])
    after = dit.layers[0].qkv.weight.detach()
    rows = qkv.shape[0] // 3
    assert not torch.equal(after[:rows], qkv[:rows])
    assert torch.equal(after[rows:], qkv[rows:])


def test_lora_on_streamed_blocks_equals_resident(tiny_models_fp32, lora_a):
    paths = resolve_models(tiny_models_fp32)
    resident, _ = generate(Engine(CPU), paths, [(lora_a[0], 0.8)])
    plan = MemoryPlan(level="dit-streamed", text_encoder="streamed", dit="streamed", dit_resident_blocks=1)
    engine = Engine(CPU.replace(speed="eager", plan=plan))
    streamed, _ = generate(engine, paths, [(lora_a[0], 0.8)])
    # Same weights, same kernels: only the blocks' storage differs (host copies vs resident).
    assert rel(streamed, resident) < 1e-6
    base, _ = generate(engine, paths)
    base_resident, _ = generate(Engine(CPU), paths)
    assert rel(base, base_resident) < 1e-6  # the host copies were restored


def test_lora_on_a_gguf_base_runs_as_a_side_path(tiny_models_fp32, tmp_path, lora_a):
    paths = resolve_models(tiny_models_fp32)
    gguf = gguf_dit_from(paths.dit, tmp_path / "dit_q8.gguf", Q.Q8_0)
    twin = dequantized_gguf(gguf, tmp_path / "dit_q8.safetensors")
    quantized = dataclasses.replace(paths, dit=gguf)
    engine = Engine(CPU.replace(speed="eager"))
    latents, _ = generate(engine, quantized, [(lora_a[0], 0.8)])
    dit = engine.load_dit(quantized.dit).component.module

    def wrapped() -> list[str]:
        return [type(m.base).__name__ for m in dit.layers[0].modules() if type(m).__name__ == "PatchedLinear"]

    # The LoRA's quantized layers get side paths (q, k, v kept apart on a CPU); a layer the tiny GGUF
    # file stores unquantized (a width that is not whole Q8_0 blocks) is merged instead.
    assert set(wrapped()) == {"QuantLinear"} and len(wrapped()) >= 5
    expected, _ = generate(Engine(CPU.replace(speed="eager")), dataclasses.replace(paths, dit=twin), [(lora_a[0], 0.8)])
    assert rel(latents, expected) < 1e-4
    base, _ = generate(engine, quantized)
    assert wrapped() == []  # unwrapped again
    plain, _ = generate(Engine(CPU.replace(speed="eager")), quantized)
    assert torch.equal(base, plain)


def test_text_encoder_lora_changes_the_conditioning_and_comes_off(tiny_models_fp32, tmp_path):
    from zturbo.testing.lora_files import text_encoder_shapes

    te_factors = random_factors(text_encoder_shapes(), ["layers.0.self_attn.q_proj", "layers.1.mlp.up_proj"], seed=4)
    dit_factors = random_factors(dit_shapes(), ["layers.0.attention.to_q"], seed=5)
    path = write_lora(tmp_path / "te.safetensors", dit_factors, "kohya", text_encoder=te_factors)
    paths = resolve_models(tiny_models_fp32)
    engine = Engine(CPU)
    model, clip = engine.load_dit(paths.dit), engine.load_text_encoder(paths.text_encoder)
    base = engine.encode_text(clip, "a cat").embeds[0]
    _, patched_clip = engine.load_lora(model, clip, path, 1.0, 0.7)
    patched = engine.encode_text(patched_clip, "a cat").embeds[0]
    assert rel(patched, base) > 1e-4
    assert torch.equal(engine.encode_text(clip, "a cat").embeds[0], base)  # the plain CLIP again


def test_unknown_targets_name_the_lora(tiny_models_fp32, lora_a):
    from zturbo.errors import InputError
    from zturbo.patches.apply import PatchState
    from zturbo.patches.base import Patch, PatchSet

    engine = Engine(CPU)
    paths = resolve_models(tiny_models_fp32)
    model, _ = engine.load_lora(engine.load_dit(paths.dit), None, lora_a[0], 1.0)
    module = model.component.module
    with pytest.raises(InputError, match="a.safetensors: the model has no weight"):
        PatchState().sync(module, PatchSet(model.patches.patches), lambda: {"x": WeightSlot(module, "x")}, "cpu")
    assert isinstance(model.patches.patches[0], Patch)
