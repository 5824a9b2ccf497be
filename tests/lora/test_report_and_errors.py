"""The report names every key it did not use; bad inputs give one clear error naming the file."""

from __future__ import annotations

import pickle

import pytest
import torch

from zturbo.errors import ModelFileError
from zturbo.lora.read import read_lora
from zturbo.testing.lora_files import (
    block_modules,
    foreign_lora,
    lora_tensors,
    random_factors,
    write_lora,
    write_tensors,
)


def test_unmatched_keys_are_named_with_reasons(tmp_path, dit_shapes):
    f = random_factors(dit_shapes, block_modules(indices=(0,)), rank=2, alpha=2.0)
    extra = {
        "lora_unet_layers_0_attention_to_qq.lora_down.weight": torch.zeros(2, 64),  # no such module
        "lora_unet_layers_0_attention_to_q.lora_mid.weight": torch.zeros(2, 2),  # LoCon Tucker core
        "lora_unet_layers_0_attention_norm1.alpha": torch.tensor(1.0),  # alpha without weights
        "lora_unet_layers_1_feed_forward_w1.lora_up.weight": torch.zeros(170, 2),  # no lora_down
        "lora_unet_layers_1_feed_forward_w1.alpha": torch.tensor(2.0),  # ... so its alpha is unused too
        "lora_unet_layers_1_feed_forward_w2.a1.weight": torch.zeros(2, 2),  # GLoRA
        "something_else": torch.zeros(1),
        "lora_unet_siglip_embedder_0.lora_down.weight": torch.zeros(2, 2),  # Omni-only module
    }
    lora = read_lora(write_lora(tmp_path / "l.safetensors", f, "kohya", extra=extra), dit_shapes=dit_shapes)
    reasons = dict(lora.report.unmatched)
    assert set(reasons) == set(extra)
    assert "names no module" in reasons["lora_unet_layers_0_attention_to_qq.lora_down.weight"]
    assert "LoCon" in reasons["lora_unet_layers_0_attention_to_q.lora_mid.weight"]
    assert "alpha without" in reasons["lora_unet_layers_0_attention_norm1.alpha"]
    assert "without its lora_down" in reasons["lora_unet_layers_1_feed_forward_w1.lora_up.weight"]
    assert "GLoRA" in reasons["lora_unet_layers_1_feed_forward_w2.a1.weight"]
    assert len(lora.patches) == 7
    text = str(lora.report)
    assert "keys: 21 of 29 used, 8 not used:" in text
    for key in extra:
        assert key in text


def test_report_text(tmp_path, dit_shapes):
    f = random_factors(dit_shapes, block_modules(), rank=4, alpha=4.0)
    meta = {"ss_network_module": "networks.lora_zimage", "ss_network_dim": "4"}
    lora = read_lora(
        write_lora(tmp_path / "my lora.safetensors", f, "kohya", metadata=meta), dit_shapes=dit_shapes
    )
    lines = str(lora.report).splitlines()
    assert (
        lines[0]
        == "my lora.safetensors: kohya/musubi-tuner (lora_unet_ + underscored diffusers names, lora_down/lora_up)"
    )
    assert lines[1] == "producer: musubi-tuner (metadata ss_network_module=networks.lora_zimage)"
    assert "adapters: 14 lora" in lines and "rank: 4" in lines and "alpha: 4" in lines
    assert "diffusion model: 14 patches" in lines
    assert "  2 layers (0–1) × attention q/k/v/out, ffn w1/w2/w3" in lines
    assert lines[-1] == "keys: 42 of 42 used (all)"
    assert len(lora.short_hash()) == 10
    assert "diffusion model 14" in lora.report.summary()


@pytest.mark.parametrize(
    ("family", "expected"),
    [("sdxl", "an SDXL LoRA"), ("flux", "a Flux LoRA"), ("flux-diffusers", "a Flux LoRA")],
)
def test_other_families_are_named(tmp_path, family, expected):
    path = write_tensors(tmp_path / "x.safetensors", foreign_lora(family))
    with pytest.raises(ModelFileError, match=f"x.safetensors: is {expected}, not a Z-Image LoRA"):
        read_lora(path)


def test_not_a_lora(tmp_path):
    path = write_tensors(tmp_path / "m.safetensors", {"cap_embedder.1.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelFileError, match="holds no LoRA tensors.*Z-Image model, not a LoRA"):
        read_lora(path)
    path = write_tensors(tmp_path / "u.safetensors", {"foo.bar.lora_down.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelFileError, match="u.safetensors: has no key that matches Z-Image"):
        read_lora(path)


@pytest.mark.parametrize("name", ["lora.pt", "lora.ckpt", "lora.bin", "disguised.safetensors"])
def test_pickles_are_refused_unread(tmp_path, name, monkeypatch):
    path = tmp_path / name
    torch.save({"a.lora_down.weight": torch.zeros(1)}, path)

    def boom(*a, **k):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(ModelFileError, match=f"{name}: .*pickle"):
        read_lora(path)


def test_corrupt_and_truncated_files(tmp_path, dit_shapes):
    good = write_lora(
        tmp_path / "g.safetensors", random_factors(dit_shapes, block_modules(), rank=2), "kohya"
    )
    data = good.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="t.safetensors: is truncated"):
        read_lora(tmp_path / "t.safetensors")
    (tmp_path / "j.safetensors").write_bytes(b"garbage!" * 10)
    with pytest.raises(ModelFileError, match="j.safetensors: is not a safetensors"):
        read_lora(tmp_path / "j.safetensors")
    with pytest.raises(ModelFileError, match="missing.safetensors: file not found"):
        read_lora(tmp_path / "missing.safetensors")


def test_rank_mismatch_inside_the_file(tmp_path):
    tensors = {
        "lora_unet_layers_0_attention_to_q.lora_down.weight": torch.zeros(4, 64),
        "lora_unet_layers_0_attention_to_q.lora_up.weight": torch.zeros(64, 8),
    }
    with pytest.raises(
        ModelFileError, match="corrupt: .*lora_up.weight has rank 8 but .*lora_down.weight has rank 4"
    ):
        read_lora(write_tensors(tmp_path / "r.safetensors", tensors))


def test_shape_mismatch_against_the_model(tmp_path, dit_shapes):
    wide = {k: (v[0] * 2, *v[1:]) if len(v) == 2 else v for k, v in dit_shapes.items()}
    wide = {k: (v[0], v[1] * 2) if len(v) == 2 else v for k, v in wide.items()}
    f = random_factors(wide, block_modules(), rank=2)  # a LoRA for a model twice as wide
    path = write_lora(tmp_path / "w.safetensors", f, "ai-toolkit")
    read_lora(path)  # without shapes there is nothing to check against
    with pytest.raises(ModelFileError) as err:
        read_lora(path, dit_shapes=dit_shapes)
    msg = str(err.value)
    assert msg.startswith(f"{path}: does not fit this model: ")
    assert "gives a 128×128 change for layers.0.attention.to_q.weight 64×64" in msg
    assert "(and 11 more)" in msg
    deep = random_factors(dit_shapes, ["layers.1.attention.to_q"], rank=2)
    deep = {"layers.7.attention.to_q": deep["layers.1.attention.to_q"]}
    with pytest.raises(
        ModelFileError, match="patches layers.7.attention.to_q.weight, which this model does not have"
    ):
        read_lora(write_lora(tmp_path / "d.safetensors", deep, "kohya"), dit_shapes=dit_shapes)


def test_duplicate_spellings_of_one_module(tmp_path, dit_shapes):
    f = random_factors(dit_shapes, ["layers.0.attention.to_q"], rank=2, alpha=2.0)
    same = lora_tensors(f, "kohya") | {k: v.clone() for k, v in lora_tensors(f, "ai-toolkit").items()}
    lora = read_lora(write_tensors(tmp_path / "s.safetensors", same))
    assert len(lora.patches) == 1 and lora.report.unmatched == []
    assert any("exact copies" in n for n in lora.report.notes)
    g = random_factors(dit_shapes, ["layers.0.attention.to_q"], rank=2, alpha=2.0, seed=9)
    clash = lora_tensors(f, "kohya") | lora_tensors(g, "ai-toolkit")
    lora = read_lora(write_tensors(tmp_path / "c.safetensors", clash))
    assert len(lora.patches) == 1
    unused = dict(lora.report.unmatched)  # the same alpha is an exact copy; the factors clash
    assert len(unused) == 2 and all("a second, different" in why for why in unused.values())
    assert {k.rsplit(".", 2)[0] for k in unused} < {
        "lora_unet_layers_0_attention_to_q",
        "diffusion_model.layers.0.attention.to_q",
    }
