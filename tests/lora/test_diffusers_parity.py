"""The formats diffusers loads: zturbo's merged weights equal diffusers' load_lora_adapter + set_adapters +
fuse_lora on the same tiny ZImageTransformer2DModel (fp32, CPU).

Tolerance: plain LoRAs are bit-identical (PEFT merges B @ A · (alpha/r · weight), the same ops).
DoRA: PEFT computes ΔW through a forward pass and the norm in its own order: |diff| <= 1e-6.
LoKr: PEFT builds kron(w1, w2) with its own alpha baking: |diff| <= 1e-6.
"""

from __future__ import annotations

import json

import pytest
import torch

from zturbo.lora.read import read_lora
from zturbo.testing.lora_files import (
    adapter_tensors,
    apply_patches,
    block_modules,
    lora_tensors,
    random_factors,
    write_lora,
    write_tensors,
)
from zturbo.testing.synthetic import TINY

pytest.importorskip("peft")

EVERY_KIND = (
    block_modules(("layers", "noise_refiner", "context_refiner"))
    + block_modules(("layers", "noise_refiner"), parts=["adaLN_modulation.0"])
    + [
        "all_x_embedder.2-1",
        "all_final_layer.2-1.linear",
        "all_final_layer.2-1.adaLN_modulation.1",
        "cap_embedder.1",
        "t_embedder.mlp.0",
        "t_embedder.mlp.2",
    ]
)


def diffusers_merged(path, base, strength, prefix="transformer"):
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    model = ZImageTransformer2DModel(**TINY.dit.kwargs())
    model.load_state_dict(base)
    state_dict, metadata = ZImagePipeline.lora_state_dict(str(path), return_lora_metadata=True)
    if prefix is None and metadata:
        metadata = {k.removeprefix("transformer."): v for k, v in metadata.items()}
    model.load_lora_adapter(state_dict, prefix=prefix, adapter_name="x", metadata=metadata)
    model.set_adapters(["x"], weights=[strength])
    model.fuse_lora(lora_scale=1.0)
    model.unload_lora()
    return {k: v.detach() for k, v in model.state_dict().items()}


def assert_parity(path, base, shapes, strength, exact=True):
    ours = apply_patches(read_lora(path, dit_shapes=shapes).patches, base, strength)
    theirs = diffusers_merged(path, base, strength, prefix=_prefix(path))
    changed = [k for k in base if not torch.equal(theirs[k], base[k])]
    assert changed, "diffusers applied nothing"
    for k in base:
        if exact:
            assert torch.equal(ours[k], theirs[k]), k
        else:
            torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-6, msg=k)
    return changed


def _prefix(path):
    # diffusers' ZImage loader keeps only "transformer."-prefixed keys: bare and PEFT-prefixed files need the
    # prefix given explicitly (its pipeline's load_lora_weights silently applies nothing to them)
    return {"bare": None, "peft": "base_model.model"}.get(path.stem, "transformer")


@pytest.mark.parametrize(
    "layout",
    ["diffusers", "peft", "ai-toolkit", "bare", "diffsynth", "kohya", "dot", "comfy-diffusers-names"],
)
def test_plain_lora_layouts_match_diffusers(tmp_path, dit_base, dit_shapes, layout):
    alpha = None if layout in ("diffsynth", "peft") else 8.0
    factors = random_factors(dit_shapes, block_modules(), rank=4, alpha=alpha, seed=3)
    path = write_lora(tmp_path / f"{layout}.safetensors", factors, layout)
    assert len(assert_parity(path, dit_base, dit_shapes, 0.8)) == 14


@pytest.mark.parametrize("layout", ["kohya", "ai-toolkit", "diffusers"])
def test_every_module_kind_matches_diffusers(tmp_path, dit_base, dit_shapes, layout):
    factors = random_factors(dit_shapes, EVERY_KIND, rank=2, alpha=1.0, seed=4)
    path = write_lora(tmp_path / f"{layout}.safetensors", factors, layout)
    assert len(assert_parity(path, dit_base, dit_shapes, 1.3)) == len(EVERY_KIND)


def test_mixed_ranks_and_alphas_match_diffusers(tmp_path, dit_base, dit_shapes):
    factors = random_factors(dit_shapes, block_modules(indices=(0,)), rank=4, alpha=4.0, seed=5)
    factors |= random_factors(dit_shapes, block_modules(indices=(1,)), rank=8, alpha=2.0, seed=6)
    for layout in ("kohya", "diffusers"):
        path = write_lora(tmp_path / f"{layout}.safetensors", factors, layout)
        assert_parity(path, dit_base, dit_shapes, 1.0)


def test_dot_format_with_redundant_fused_keys_matches_diffusers(tmp_path, dit_base, dit_shapes):
    modules = [f"layers.0.attention.to_{p}" for p in "qkv"] + ["layers.0.attention.to_out.0"]
    f = random_factors(dit_shapes, modules, rank=2, alpha=2.0)
    tensors = lora_tensors(f, "dot")
    tensors |= {
        "diffusion_model.layers.0.attention.qkv.lora.down.weight": torch.cat(
            [f[m].down for m in modules[:3]]
        ),
        "diffusion_model.layers.0.attention.qkv.lora.up.weight": torch.block_diag(
            *[f[m].up for m in modules[:3]]
        ),
        "diffusion_model.layers.0.attention.qkv.alpha": torch.tensor(6.0),
    }
    path = write_tensors(tmp_path / "dot.safetensors", tensors)
    assert_parity(path, dit_base, dit_shapes, 1.0)


def test_peft_dora_matches_diffusers(tmp_path, dit_base, dit_shapes):
    modules = ["layers.0.attention.to_q", "layers.0.feed_forward.w1"]
    factors = random_factors(dit_shapes, modules, rank=4, seed=7)
    tensors = lora_tensors(factors, "diffusers")
    for m in modules:
        w = dit_base[m + ".weight"]
        tensors[f"transformer.{m}.lora_magnitude_vector"] = w.norm(dim=1) * 1.2
    meta = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.target_modules": modules}
    meta |= {"transformer.use_dora": True}
    path = write_tensors(
        tmp_path / "diffusers.safetensors", tensors, {"lora_adapter_metadata": json.dumps(meta)}
    )
    assert len(assert_parity(path, dit_base, dit_shapes, 1.0, exact=False)) == 2


def test_ai_toolkit_lokr_matches_diffusers(tmp_path, dit_base, dit_shapes):
    from peft.tuners.lokr.layer import factorization

    modules = {}
    gen = torch.Generator().manual_seed(8)
    for m in ["layers.0.attention.to_q", "layers.1.feed_forward.w1", "layers.1.feed_forward.w2"]:
        (out_l, out_k), (in_m, in_n) = (factorization(d, -1) for d in dit_shapes[m + ".weight"])
        modules[m] = {
            ".lokr_w1": torch.randn(out_l, in_m, generator=gen) * 0.1,
            ".lokr_w2_a": torch.randn(out_k, 2, generator=gen) * 0.1,
            ".lokr_w2_b": torch.randn(2, in_n, generator=gen) * 0.1,
            ".alpha": torch.tensor(4.0),
        }
    path = write_tensors(tmp_path / "ai-toolkit.safetensors", adapter_tensors(modules, "ai-toolkit"))
    assert len(assert_parity(path, dit_base, dit_shapes, 0.9, exact=False)) == 3


def test_diffusers_cannot_load_native_qkv_but_zturbo_does(tmp_path, dit_base, dit_shapes):
    """ComfyUI-native qkv LoRAs: diffusers' converter keeps `attention.qkv`, a module its class lacks."""
    factors = random_factors(dit_shapes, ["layers.0.attention.qkv", "layers.0.attention.to_out.0"], rank=2)
    path = write_lora(tmp_path / "comfy.safetensors", factors, "comfy")
    try:
        theirs = diffusers_merged(path, dit_base, 1.0)
    except (ValueError, KeyError, RuntimeError):
        theirs = None
    if theirs is not None:
        qkv = [f"layers.0.attention.to_{p}.weight" for p in "qkv"]
        assert all(torch.equal(theirs[k], dit_base[k]) for k in qkv)  # silently not applied
    ours = apply_patches(read_lora(path, dit_shapes=dit_shapes).patches, dit_base)
    assert not torch.equal(ours["layers.0.attention.to_q.weight"], dit_base["layers.0.attention.to_q.weight"])
