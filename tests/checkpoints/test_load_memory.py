"""Loading never holds two copies: same-dtype weights stay memory-mapped from the file."""

from __future__ import annotations

import gc

import psutil
import torch

from zturbo.checkpoints.load import load_dit
from zturbo.models.configs import DiTConfig
from zturbo.testing.synthetic import ModelSet, write_comfy_models

MEDIUM = DiTConfig(
    dim=1024, n_layers=6, n_refiner_layers=2, n_heads=8, n_kv_heads=8, cap_feat_dim=32, axes_dims=[32, 48, 48]
)


def test_same_dtype_load_adds_no_copy(tmp_path, tiny_models):
    from zturbo.testing.synthetic import TINY

    write_comfy_models(tmp_path, ModelSet(MEDIUM, TINY.text_encoder, TINY.vae), dtype=torch.bfloat16)
    path = tmp_path / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    size = path.stat().st_size
    assert size > 200e6
    gc.collect()
    before = psutil.Process().memory_info().rss
    model = load_dit(path, dtype=torch.bfloat16).module
    grown = psutil.Process().memory_info().rss - before
    assert sum(p.numel() * p.element_size() for p in model.parameters()) >= size * 0.99
    assert grown < 0.25 * size, f"loading grew RSS by {grown / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"
