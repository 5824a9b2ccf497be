"""`convert_lora` and the `zturbo lora inspect|convert` sub-app.

Tolerance for conversions: the fused qkv LoRA sums the same products over a longer (zero-padded) rank
and folded scales round once in fp32: |diff| <= 1e-6 on these O(1) weights; renamings are exact.
"""

from __future__ import annotations

import torch
from safetensors import safe_open
from typer.testing import CliRunner

from zturbo.lora.cli import lora_app
from zturbo.lora.convert import convert_lora
from zturbo.lora.read import read_lora
from zturbo.testing.lora_files import (
    adapter_tensors,
    apply_patches,
    block_modules,
    random_factors,
    write_lora,
    write_tensors,
)

runner = CliRunner()


def close(a, b, exact=False):
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def keys_of(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys()), f.metadata()


def test_split_qkv_become_one_native_qkv_and_back(tmp_path, dit_base, dit_shapes):
    factors = random_factors(dit_shapes, block_modules(), rank=4, alpha=8.0)
    factors |= random_factors(dit_shapes, ["noise_refiner.0.attention.to_k"], rank=2, alpha=1.0, seed=3)
    factors |= random_factors(dit_shapes, ["all_x_embedder.2-1", "all_final_layer.2-1.linear"], rank=2)
    src = read_lora(write_lora(tmp_path / "src.safetensors", factors, "diffusers"), dit_shapes=dit_shapes)
    want = apply_patches(src.patches, dit_base, 0.8)

    comfy = convert_lora(src, "comfy")
    assert comfy.refused == [] and any("fused into native qkv" in n for n in comfy.notes)
    comfy_path = comfy.save(tmp_path / "comfy.safetensors")
    keys, _ = keys_of(comfy_path)
    assert "diffusion_model.layers.0.attention.qkv.lora_down.weight" in keys
    assert "diffusion_model.layers.0.attention.out.lora_up.weight" in keys
    assert "diffusion_model.x_embedder.lora_down.weight" in keys
    assert "diffusion_model.final_layer.linear.lora_up.weight" in keys
    assert "diffusion_model.noise_refiner.0.attention.qkv.lora_up.weight" in keys  # k alone: zero q/v blocks
    assert not any("to_q" in k for k in keys)
    back = read_lora(comfy_path, dit_shapes=dit_shapes)
    qkv = next(p for p in back.patches if p.targets[0] == "layers.0.attention.to_q.weight")
    assert qkv.adapter.rank == 12 and qkv.adapter.alpha == 24.0 and len(qkv.targets) == 3
    assert back.report.format.startswith("ComfyUI (diffusion_model. + original Z-Image names")
    close(apply_patches(back.patches, dit_base, 0.8), want)

    diffusers = convert_lora(back, "diffusers")
    assert diffusers.refused == []
    again = read_lora(diffusers.save(tmp_path / "diffusers.safetensors"), dit_shapes=dit_shapes)
    ranks = {p.targets[0]: p.adapter.rank for p in again.patches}
    assert ranks["layers.0.attention.to_q.weight"] == 4  # the block-diagonal fusion undone exactly
    assert ranks["noise_refiner.0.attention.to_k.weight"] == 2
    assert len(again.patches) == len(src.patches)
    close(apply_patches(again.patches, dit_base, 0.8), want)


def test_lycoris_to_comfy_exact_and_to_diffusers_refused(tmp_path, dit_base, dit_shapes):
    g = torch.Generator().manual_seed(0)
    modules = {
        "layers.0.attention.to_q": {
            ".lokr_w1": torch.randn(8, 4, generator=g),
            ".lokr_w2": torch.randn(8, 16, generator=g),
        },
        "layers.0.feed_forward.w2": {
            ".hada_w1_a": torch.randn(64, 2, generator=g),
            ".hada_w1_b": torch.randn(2, 170, generator=g),
            ".hada_w2_a": torch.randn(64, 2, generator=g),
            ".hada_w2_b": torch.randn(2, 170, generator=g),
            ".alpha": torch.tensor(1.0),
        },
        "layers.1.attention.to_v": {
            ".lora_down.weight": torch.randn(2, 64, generator=g),
            ".lora_up.weight": torch.randn(64, 2, generator=g),
            ".dora_scale": torch.rand(1, 64, generator=g) + 1,
        },
        "layers.1.adaLN_modulation.0": {".diff_b": torch.randn(256, generator=g)},
    }
    src = read_lora(
        write_tensors(tmp_path / "l.safetensors", adapter_tensors(modules, "lycoris")), dit_shapes=dit_shapes
    )
    want = apply_patches(src.patches, dit_base, 0.7)
    comfy = convert_lora(src, "comfy")
    assert comfy.refused == []
    back = read_lora(comfy.save(tmp_path / "c.safetensors"), dit_shapes=dit_shapes)
    close(apply_patches(back.patches, dit_base, 0.7), want, exact=True)
    keys, _ = keys_of(tmp_path / "c.safetensors")
    assert "diffusion_model.layers.0.attention.to_q.lokr_w1" in keys  # LoKr cannot be fused into qkv
    refused = dict(convert_lora(src, "diffusers").refused)
    assert len(refused) == 4
    assert any("LoKr" in why for why in refused.values()) and any("LoHa" in why for why in refused.values())
    assert any("per-column DoRA" in why for why in refused.values())
    assert any("bias patch" in why for why in refused.values())


def test_text_encoder_lora_converts_both_ways(tmp_path, te_base, te_shapes, dit_shapes):
    te = random_factors(te_shapes, ["layers.0.self_attn.q_proj", "layers.1.mlp.up_proj"], rank=2, alpha=4.0)
    dit = random_factors(dit_shapes, ["layers.0.attention.to_out.0"], rank=2, alpha=4.0)
    src = read_lora(
        write_lora(tmp_path / "s.safetensors", dit, "kohya", text_encoder=te), text_encoder_shapes=te_shapes
    )
    want = apply_patches([p for p in src.patches if p.component == "text_encoder"], te_base)
    for to in ("comfy", "diffusers"):
        out = convert_lora(src, to)
        back = read_lora(out.save(tmp_path / f"{to}.safetensors"), text_encoder_shapes=te_shapes)
        close(
            apply_patches([p for p in back.patches if p.component == "text_encoder"], te_base),
            want,
            exact=True,
        )
    keys, meta = keys_of(tmp_path / "diffusers.safetensors")
    assert "text_encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "transformer.layers.0.attention.to_out.0.lora_B.weight" in keys
    assert "lora_adapter_metadata" in meta
    keys, _ = keys_of(tmp_path / "comfy.safetensors")
    assert "lora_te_layers_1_mlp_up_proj.lora_up.weight" in keys


def test_cli_inspect(tmp_path, dit_shapes):
    path = write_lora(
        tmp_path / "x.safetensors", random_factors(dit_shapes, block_modules(), rank=4), "ai-toolkit"
    )
    result = runner.invoke(lora_app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "x.safetensors: ai-toolkit (diffusion_model. + diffusers names, lora_A/lora_B)" in result.output
    assert "2 layers (0–1) × attention q/k/v/out, ffn w1/w2/w3" in result.output
    assert "sha256: " in result.output


def test_cli_inspect_checks_shapes_against_a_model_file(tmp_path, tiny_models, dit_shapes):
    from zturbo.checkpoints.layout import COMFY_FILES

    model = tiny_models / COMFY_FILES["dit"]
    wide = {k: tuple(d * 2 for d in v) for k, v in dit_shapes.items()}
    path = write_lora(tmp_path / "w.safetensors", random_factors(wide, block_modules(), rank=2), "kohya")
    ok = write_lora(tmp_path / "ok.safetensors", random_factors(dit_shapes, block_modules(), rank=2), "kohya")
    assert runner.invoke(lora_app, ["inspect", str(ok), "--model", str(model)]).exit_code == 0
    result = runner.invoke(lora_app, ["inspect", str(path), "--model", str(model)])
    assert result.exit_code == 2
    assert "error: " in result.output and "does not fit this model" in result.output
    assert "Traceback" not in result.output


def test_cli_convert_and_errors(tmp_path, dit_base, dit_shapes):
    src = write_lora(
        tmp_path / "s.safetensors", random_factors(dit_shapes, block_modules(), rank=4, alpha=4.0), "kohya"
    )
    out = tmp_path / "out" / "c.safetensors"
    result = runner.invoke(lora_app, ["convert", str(src), str(out), "--to", "comfy"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "fused into native qkv" in result.output
    close(apply_patches(read_lora(out).patches, dit_base), apply_patches(read_lora(src).patches, dit_base))

    lokr = write_tensors(
        tmp_path / "k.safetensors",
        adapter_tensors(
            {"layers.0.attention.to_q": {".lokr_w1": torch.ones(8, 4), ".lokr_w2": torch.ones(8, 16)}},
            "lycoris",
        )
        | {
            "lycoris_layers_0_attention_to_k.lora_down.weight": torch.ones(2, 64),
            "lycoris_layers_0_attention_to_k.lora_up.weight": torch.ones(64, 2),
        },
    )
    refused = runner.invoke(
        lora_app, ["convert", str(lokr), str(tmp_path / "d.safetensors"), "--to", "diffusers"]
    )
    assert refused.exit_code == 2 and "1 patches cannot be written as diffusers" in refused.output
    assert "lycoris_layers_0_attention_to_q.lokr_w1: LoKr" in refused.output
    assert not (tmp_path / "d.safetensors").exists()
    skipped = runner.invoke(
        lora_app,
        ["convert", str(lokr), str(tmp_path / "d.safetensors"), "--to", "diffusers", "--skip-unsupported"],
    )
    assert skipped.exit_code == 0 and "skipped lycoris_layers_0_attention_to_q.lokr_w1" in skipped.output

    bad = runner.invoke(lora_app, ["convert", str(src), str(tmp_path / "x.safetensors"), "--to", "kohya"])
    assert bad.exit_code == 2 and "unknown LoRA layout 'kohya'" in bad.output
    pickle_file = tmp_path / "p.pt"
    torch.save({}, pickle_file)
    result = runner.invoke(lora_app, ["inspect", str(pickle_file)])
    assert result.exit_code == 2 and "pickle" in result.output and "Traceback" not in result.output
