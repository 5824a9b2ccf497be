"""Every plain-LoRA layout: the patches' merged weights equal the hand-merged weights.

Tolerance: exact (torch.equal) where the hand merge runs the same float32 ops as the adapter,
W + (up @ down) * (strength * alpha / rank); equivalent factorisations (a fused qkv LoRA vs its split
to_q/to_k/to_v LoRAs) sum the same products in another order: |diff| <= 1e-6 for these O(1) weights.
"""

from __future__ import annotations

import pytest
import torch

from zturbo.lora.read import read_lora
from zturbo.testing.lora_files import (
    DIT_LAYOUTS,
    TE_LAYOUTS,
    LoraFactors,
    apply_patches,
    block_modules,
    random_factors,
    write_lora,
)

QKV = ("to_q", "to_k", "to_v")


def hand_merge(base, factors, strength):
    """W + (up @ down) * (strength * scale), a native qkv LoRA split over to_q/to_k/to_v."""
    out = {k: v.clone() for k, v in base.items()}
    for module, f in factors.items():
        delta = (f.up.float() @ f.down.float()) * (strength * f.scale)
        if module.endswith(".attention.qkv"):
            stem = module[: -len("qkv")]
            names = [f"{stem}{p}.weight" for p in QKV]
            merged = torch.cat([base[n] for n in names]) + delta
            for name, part in zip(names, merged.chunk(3), strict=True):
                out[name] = part
        else:
            out[module + ".weight"] = base[module + ".weight"] + delta
    return out


def assert_same(a: dict, b: dict, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("layout", sorted(DIT_LAYOUTS))
@pytest.mark.parametrize("alpha", [None, 8.0])
def test_every_layout_merges_like_by_hand(tmp_path, dit_base, dit_shapes, layout, alpha):
    modules = block_modules(("layers", "noise_refiner", "context_refiner"))
    factors = random_factors(dit_shapes, modules, rank=4, alpha=alpha, seed=1)
    lora = read_lora(write_lora(tmp_path / "l.safetensors", factors, layout), dit_shapes=dit_shapes)
    assert lora.report.unmatched == []
    assert len(lora.patches) == len(modules)
    assert_same(apply_patches(lora.patches, dit_base, 0.7), hand_merge(dit_base, factors, 0.7))
    coverage = lora.report.coverage["dit"]
    assert "2 layers (0–1) × attention q/k/v/out, ffn w1/w2/w3" in coverage
    assert "2 noise_refiner (0–1) × attention q/k/v/out, ffn w1/w2/w3" in coverage


def test_dtype_of_stored_factors_is_kept_and_merged_in_fp32(tmp_path, dit_base, dit_shapes):
    factors = random_factors(dit_shapes, block_modules(), rank=2, alpha=1.0, dtype=torch.bfloat16)
    lora = read_lora(write_lora(tmp_path / "l.safetensors", factors, "kohya"), dit_shapes=dit_shapes)
    assert lora.patches[0].adapter.up.dtype == torch.bfloat16
    assert_same(apply_patches(lora.patches, dit_base), hand_merge(dit_base, factors, 1.0))


@pytest.mark.parametrize("layout", ["comfy", "comfy-unet", "comfy-full-prefix"])
def test_native_qkv_equals_split_qkv(tmp_path, dit_base, dit_shapes, layout):
    """One native qkv LoRA of rank r_q+r_k+r_v with block-diagonal up == three split LoRAs."""
    split = {}
    for i, (proj, rank, alpha) in enumerate(zip(QKV, (2, 3, 4), (2.0, 6.0, None), strict=True)):
        split |= {
            f"layers.{b}.attention.{proj}": f
            for b in (0, 1)
            for f in random_factors(
                dit_shapes, [f"layers.{b}.attention.{proj}"], rank=rank, alpha=alpha, seed=10 * b + i
            ).values()
        }
    fused = {}
    for b in (0, 1):
        parts = [split[f"layers.{b}.attention.{p}"] for p in QKV]
        fused[f"layers.{b}.attention.qkv"] = LoraFactors(
            torch.block_diag(*[f.up * f.scale for f in parts]), torch.cat([f.down for f in parts]), None
        )
    a = read_lora(write_lora(tmp_path / "split.safetensors", split, "kohya"), dit_shapes=dit_shapes)
    b = read_lora(write_lora(tmp_path / "fused.safetensors", fused, layout), dit_shapes=dit_shapes)
    assert [p.targets for p in b.patches][0] == tuple(f"layers.0.attention.{p}.weight" for p in QKV)
    assert b.patches[0].rows == (64, 64, 64)
    assert "qkv (fused)" in b.report.coverage["dit"][0]
    assert_same(apply_patches(b.patches, dit_base, 0.5), hand_merge(dit_base, fused, 0.5))
    assert_same(apply_patches(a.patches, dit_base, 0.5), apply_patches(b.patches, dit_base, 0.5), exact=False)


def test_every_module_kind_kohya_and_diffusers(tmp_path, dit_base, dit_shapes):
    """Refiners, adaLN, embedders, final layer, timestep and caption embedders (kohya underscores them)."""
    modules = block_modules(("layers", "noise_refiner"), parts=["adaLN_modulation.0"]) + [
        "all_x_embedder.2-1",
        "all_final_layer.2-1.linear",
        "all_final_layer.2-1.adaLN_modulation.1",
        "cap_embedder.1",
        "t_embedder.mlp.0",
        "t_embedder.mlp.2",
    ]
    factors = random_factors(dit_shapes, modules, rank=3, alpha=3.0)
    for layout in ("kohya", "diffusers", "comfy", "lycoris"):
        lora = read_lora(
            write_lora(tmp_path / f"{layout}.safetensors", factors, layout), dit_shapes=dit_shapes
        )
        assert lora.report.unmatched == [], layout
        assert_same(apply_patches(lora.patches, dit_base), hand_merge(dit_base, factors, 1.0))
    lines = lora.report.coverage["dit"]
    assert any(line.startswith("2 layers (0–1) × adaLN modulation") for line in lines)
    assert "all_final_layer.2-1.adaLN_modulation.1" in lines[-1] and "t_embedder.mlp.2" in lines[-1]


def test_peft_metadata_alpha_patterns_and_rslora(tmp_path, dit_base, dit_shapes):
    modules = block_modules(indices=(0,))
    factors = random_factors(dit_shapes, modules, rank=4, alpha=8.0)
    factors["layers.0.feed_forward.w2"].alpha = 2.0  # alpha_pattern
    factors["layers.0.attention.to_q"] = random_factors(
        dit_shapes, ["layers.0.attention.to_q"], rank=2, alpha=8.0
    )["layers.0.attention.to_q"]  # rank_pattern
    path = write_lora(tmp_path / "l.safetensors", factors, "diffusers")
    lora = read_lora(path, dit_shapes=dit_shapes)
    assert_same(apply_patches(lora.patches, dit_base), hand_merge(dit_base, factors, 1.0))
    assert lora.report.alphas == {"8": 6, "2": 1}
    assert any("lora_adapter_metadata" in n for n in lora.report.notes)


def test_text_encoder_layouts(tmp_path, te_base, te_shapes, dit_base, dit_shapes):
    modules = [
        f"layers.{i}.{p}" for i in (0, 2) for p in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj")
    ]
    te = random_factors(te_shapes, modules, rank=2, alpha=4.0)
    dit = random_factors(dit_shapes, ["layers.0.attention.to_q"], rank=2, alpha=1.0)
    for te_layout in TE_LAYOUTS:
        alpha_te = te if TE_LAYOUTS[te_layout][3] else {m: LoraFactors(f.up, f.down) for m, f in te.items()}
        path = write_lora(
            tmp_path / f"{te_layout}.safetensors", dit, "kohya", text_encoder=alpha_te, te_layout=te_layout
        )
        lora = read_lora(path, dit_shapes=dit_shapes, text_encoder_shapes=te_shapes)
        assert lora.report.unmatched == [], te_layout
        te_patches = [p for p in lora.patches if p.component == "text_encoder"]
        assert {p.targets[0] for p in te_patches} == {m + ".weight" for m in modules}
        assert_same(apply_patches(te_patches, te_base), hand_merge(te_base, alpha_te, 1.0))
        assert lora.report.patch_counts == {"dit": 1, "text_encoder": 6}
        assert "2 layers (0, 2) × self_attn q/k, mlp down" in lora.report.coverage["text_encoder"]


def test_peft_metadata_unpacked_and_rslora(tmp_path, dit_base, dit_shapes):
    """A plain LoraConfig dict (no `transformer.` packing); use_rslora: scale = lora_alpha / sqrt(r)."""
    import json

    from zturbo.testing.lora_files import lora_tensors, write_tensors

    factors = random_factors(dit_shapes, ["layers.0.attention.to_q"], rank=4, seed=2)
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 6, "use_rslora": True})}
    path = write_tensors(tmp_path / "r.safetensors", lora_tensors(factors, "bare"), meta)
    (patch,) = read_lora(path, dit_shapes=dit_shapes).patches
    assert patch.adapter.scale == pytest.approx(6 / 2)
    f = factors["layers.0.attention.to_q"]
    expected = dit_base["layers.0.attention.to_q.weight"] + (f.up @ f.down) * patch.adapter.scale
    assert torch.equal(apply_patches([patch], dit_base)["layers.0.attention.to_q.weight"], expected)
