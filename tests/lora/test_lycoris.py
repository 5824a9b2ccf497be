"""LyCORIS adapters, DoRA, full differences and bias patches against hand-written formulas.

Tolerance: exact (torch.equal) — each hand formula runs the same float32 ops in the same order as
ComfyUI's weight adapters (comfy/weight_adapter/{lokr,loha,base}.py), which the adapters follow.
"""

from __future__ import annotations

import pytest
import torch

from zturbo.lora.read import read_lora
from zturbo.testing.lora_files import adapter_tensors, apply_patches, write_lora, write_tensors

EPS = torch.finfo(torch.float32).eps
Q = "layers.0.attention.to_q"
W1 = "layers.1.feed_forward.w1"  # 170 × 64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def merged_one(tmp_path, dit_base, dit_shapes, modules, layout="ai-toolkit", strength=1.0, name="l"):
    path = write_tensors(tmp_path / f"{name}.safetensors", adapter_tensors(modules, layout))
    lora = read_lora(path, dit_shapes=dit_shapes)
    assert lora.report.unmatched == []
    return lora, apply_patches(lora.patches, dit_base, strength)


@pytest.mark.parametrize("layout", ["ai-toolkit", "lycoris", "kohya", "comfy"])
def test_lokr_full_factors_ignore_alpha(tmp_path, dit_base, dit_shapes, layout):
    w1, w2 = rand(8, 4, seed=1), rand(8, 16, seed=2)
    lora, out = merged_one(
        tmp_path,
        dit_base,
        dit_shapes,
        {Q: {".lokr_w1": w1, ".lokr_w2": w2, ".alpha": torch.tensor(3.0)}},
        layout,
        0.8,
    )
    assert lora.report.adapters == {"lokr": 1}
    assert torch.equal(out[Q + ".weight"], dit_base[Q + ".weight"] + torch.kron(w1, w2) * (0.8 * 1.0))


def test_lokr_decomposed_forms_and_tucker(tmp_path, dit_base, dit_shapes):
    w1, w1a, w1b = rand(10, 4, seed=1), rand(10, 2, seed=3), rand(2, 4, seed=4)
    w2a, w2b, t2 = rand(17, 3, seed=5), rand(3, 16, seed=6), rand(3, 3, seed=7)
    cases = {
        "w2 decomposed": (
            {".lokr_w1": w1, ".lokr_w2_a": w2a, ".lokr_w2_b": w2b},
            torch.kron(w1, w2a @ w2b),
            6.0 / 3,
        ),
        "w1 decomposed": (
            {".lokr_w1_a": w1a, ".lokr_w1_b": w1b, ".lokr_w2": w2a @ w2b},
            torch.kron(w1a @ w1b, w2a @ w2b),
            6.0 / 2,
        ),
        "tucker t2": (
            # LyCORIS stores the Tucker factors transposed: w2_a (rank, out), w2_b (rank, in)
            {".lokr_w1": w1, ".lokr_w2_a": w2a.T.contiguous(), ".lokr_w2_b": w2b, ".lokr_t2": t2},
            torch.kron(w1, torch.einsum("i j, j r, i p -> p r", t2, w2b, w2a.T).contiguous()),
            6.0 / 3,
        ),
    }
    for name, (parts, raw, scale) in cases.items():
        parts = {**parts, ".alpha": torch.tensor(6.0)}
        _, out = merged_one(
            tmp_path, dit_base, dit_shapes, {W1: parts}, "lycoris", 0.5, name.replace(" ", "_")
        )
        expected = dit_base[W1 + ".weight"] + raw * (0.5 * scale)
        assert torch.equal(out[W1 + ".weight"], expected), name


def test_loha_plain_and_tucker(tmp_path, dit_base, dit_shapes):
    a1, b1, a2, b2 = rand(64, 4, seed=1), rand(4, 64, seed=2), rand(64, 4, seed=3), rand(4, 64, seed=4)
    parts = {
        ".hada_w1_a": a1,
        ".hada_w1_b": b1,
        ".hada_w2_a": a2,
        ".hada_w2_b": b2,
        ".alpha": torch.tensor(2.0),
    }
    lora, out = merged_one(tmp_path, dit_base, dit_shapes, {Q: parts}, "kohya", 0.75)
    assert lora.report.adapters == {"loha": 1}
    assert torch.equal(out[Q + ".weight"], dit_base[Q + ".weight"] + ((a1 @ b1) * (a2 @ b2)) * (0.75 * 0.5))
    t1, t2 = rand(4, 4, seed=5), rand(4, 4, seed=6)
    tucker = {
        ".hada_w1_a": a1.T.contiguous(),
        ".hada_w1_b": b1,
        ".hada_w2_a": a2.T.contiguous(),
        ".hada_w2_b": b2,
    }
    tucker |= {".hada_t1": t1, ".hada_t2": t2}
    _, out = merged_one(tmp_path, dit_base, dit_shapes, {Q: tucker}, "kohya", 1.0, "tucker")
    m1 = torch.einsum("i j, j r, i p -> p r", t1, b1, a1.T)
    m2 = torch.einsum("i j, j r, i p -> p r", t2, b2, a2.T)
    assert torch.equal(out[Q + ".weight"], dit_base[Q + ".weight"] + (m1 * m2) * 1.0)


def dora_reference(weight, delta, magnitude, axis, strength, eps):
    """DoRA as trained (the patched weight's norm) with ComfyUI's strength and eps."""
    full = weight + delta
    norm = full.norm(dim=1 if axis == "row" else 0, keepdim=True)
    full = full * (magnitude.reshape(norm.shape) / (norm + eps))
    return full if strength == 1.0 else weight + strength * (full - weight)


@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("axis", ["row", "column"])
def test_dora_scale(tmp_path, dit_base, dit_shapes, axis, strength):
    up, down = rand(170, 4, seed=1), rand(4, 64, seed=2)
    w = dit_base[W1 + ".weight"]
    shape = (170, 1) if axis == "row" else (1, 64)
    magnitude = w.norm(dim=1 if axis == "row" else 0, keepdim=True).reshape(shape) * 1.1
    parts = {
        ".lora_down.weight": down,
        ".lora_up.weight": up,
        ".alpha": torch.tensor(2.0),
        ".dora_scale": magnitude,
    }
    lora, out = merged_one(tmp_path, dit_base, dit_shapes, {W1: parts}, "kohya", strength)
    assert lora.patches[0].adapter.dora.axis == axis
    assert lora.patches[0].adapter.factors() is None  # DoRA has no exact low-rank side path
    expected = dora_reference(w, (up @ down) * 0.5, magnitude, axis, strength, EPS)
    assert torch.equal(out[W1 + ".weight"], expected)
    assert "lora+dora" in lora.report.adapters and any("DoRA" in n for n in lora.report.notes)


def test_peft_magnitude_vector_is_per_row_without_eps(tmp_path, dit_base, dit_shapes):
    up, down = rand(64, 4, seed=1), rand(4, 64, seed=2)
    magnitude = rand(64, seed=3).abs() + 1
    tensors = {f"transformer.{Q}.lora_A.weight": down, f"transformer.{Q}.lora_B.weight": up}
    tensors[f"transformer.{Q}.lora_magnitude_vector"] = magnitude
    lora = read_lora(write_tensors(tmp_path / "d.safetensors", tensors), dit_shapes=dit_shapes)
    out = apply_patches(lora.patches, dit_base)
    expected = dora_reference(dit_base[Q + ".weight"], (up @ down) * 1.0, magnitude, "row", 1.0, 0.0)
    assert torch.equal(out[Q + ".weight"], expected)


def test_full_diffs_biases_and_norms(tmp_path, dit_base, dit_shapes):
    mod = "layers.0.adaLN_modulation.0"
    diff, diff_b, norm = rand(256, 64, seed=1), rand(256, seed=2), rand(64, seed=3)
    modules = {
        mod: {".diff": diff, ".diff_b": diff_b},
        "layers.0.attention_norm1": {".w_norm": norm},
        "x_pad_token": {".diff": rand(1, 64, seed=4)},
        "layers.0.attention.qkv": {".diff": rand(192, 64, seed=5)},
    }
    lora, out = merged_one(tmp_path, dit_base, dit_shapes, modules, "comfy", 0.5)
    assert lora.report.adapters == {"diff": 5}
    assert torch.equal(out[mod + ".weight"], dit_base[mod + ".weight"] + diff * 0.5)
    assert torch.equal(out[mod + ".bias"], dit_base[mod + ".bias"] + diff_b * 0.5)
    assert torch.equal(
        out["layers.0.attention_norm1.weight"], dit_base["layers.0.attention_norm1.weight"] + norm * 0.5
    )
    qkv = (
        torch.cat([dit_base[f"layers.0.attention.to_{p}.weight"] for p in "qkv"])
        + modules["layers.0.attention.qkv"][".diff"] * 0.5
    )
    assert torch.equal(torch.cat([out[f"layers.0.attention.to_{p}.weight"] for p in "qkv"]), qkv)


def test_peft_lora_bias_is_scaled_like_its_lora(tmp_path, dit_base, dit_shapes):
    mod = "all_x_embedder.2-1"
    up, down, b = rand(64, 2, seed=1), rand(2, 64, seed=2), rand(64, seed=3)
    tensors = {f"diffusion_model.{mod}.lora_A.weight": down, f"diffusion_model.{mod}.lora_B.weight": up}
    tensors |= {f"diffusion_model.{mod}.lora_B.bias": b, f"diffusion_model.{mod}.alpha": torch.tensor(1.0)}
    lora = read_lora(write_tensors(tmp_path / "b.safetensors", tensors), dit_shapes=dit_shapes)
    out = apply_patches(lora.patches, dit_base, 0.9)
    assert torch.equal(out[mod + ".bias"], dit_base[mod + ".bias"] + b * (0.9 * 0.5))
    assert torch.equal(out[mod + ".weight"], dit_base[mod + ".weight"] + (up @ down) * (0.9 * 0.5))


def test_lycoris_lokr_simpletuner_prefix_reports_format(tmp_path, dit_shapes):
    parts = {".lokr_w1": rand(8, 4), ".lokr_w2": rand(8, 16)}
    path = write_tensors(tmp_path / "s.safetensors", adapter_tensors({Q: parts}, "lycoris"))
    report = read_lora(path, dit_shapes=dit_shapes).report
    assert report.format.startswith("SimpleTuner LyCORIS (lycoris_")
    assert "LoKr" in report.format


def test_dot_format_redundant_fused_keys_used_once(tmp_path, dit_base, dit_shapes):
    """Anime-Z-style files store qkv and out next to to.q/to.k/to.v and to_out.0 (same values)."""
    from zturbo.testing.lora_files import lora_tensors, random_factors

    modules = [f"layers.0.attention.to_{p}" for p in "qkv"] + ["layers.0.attention.to_out.0"]
    f = random_factors(dit_shapes, modules, rank=2, alpha=2.0)
    tensors = lora_tensors(f, "dot")
    up = torch.block_diag(*[f[m].up for m in modules[:3]])
    tensors |= {
        "diffusion_model.layers.0.attention.qkv.lora.down.weight": torch.cat(
            [f[m].down for m in modules[:3]]
        ),
        "diffusion_model.layers.0.attention.qkv.lora.up.weight": up,
        "diffusion_model.layers.0.attention.qkv.alpha": torch.tensor(6.0),
        "diffusion_model.layers.0.attention.out.lora.down.weight": f[modules[3]].down.clone(),
        "diffusion_model.layers.0.attention.out.lora.up.weight": f[modules[3]].up.clone(),
    }
    lora = read_lora(write_tensors(tmp_path / "dot.safetensors", tensors), dit_shapes=dit_shapes)
    assert lora.report.unmatched == []
    assert len(lora.patches) == 4 and all(len(p.targets) == 1 for p in lora.patches)
    assert len(lora.report.notes) == 2  # the out copy and the fused qkv copy, each said
    # a fused qkv that differs from its split copies is reported, not applied twice
    tensors["diffusion_model.layers.0.attention.qkv.lora.up.weight"] = up * 2
    lora = read_lora(write_tensors(tmp_path / "dot2.safetensors", tensors), dit_shapes=dit_shapes)
    assert {k for k, _ in lora.report.unmatched} == {
        f"diffusion_model.layers.0.attention.qkv.{s}" for s in ("lora.down.weight", "lora.up.weight", "alpha")
    }
    assert "different values" in lora.report.unmatched[0][1]
    ref = write_lora(tmp_path / "ref.safetensors", f, "kohya")
    want = apply_patches(read_lora(ref).patches, dit_base)
    assert all(torch.equal(apply_patches(lora.patches, dit_base)[k], want[k]) for k in want)
