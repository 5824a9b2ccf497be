"""Shared fixtures: tiny random-weight Z-Image models written in every real layout.

The same seed gives the same weights in every layout, so loaders can be compared bit for bit and
zturbo can be compared with diffusers on identical weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zturbo.testing.synthetic import TINY, write_comfy_models, write_diffusers_folder


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A ComfyUI-style models dir (bf16 single files, standard names)."""
    root = tmp_path_factory.mktemp("models_bf16")
    write_comfy_models(root, TINY, dtype=torch.bfloat16)
    return root


@pytest.fixture(scope="session")
def tiny_models_fp32(tmp_path_factory) -> Path:
    """ComfyUI single files in fp32 with the `model.diffusion_model.` prefix (for exact parity)."""
    root = tmp_path_factory.mktemp("models_fp32")
    write_comfy_models(root, TINY, dtype=torch.float32, dit_prefix="model.diffusion_model.")
    return root


@pytest.fixture(scope="session")
def tiny_diffusers(tmp_path_factory) -> Path:
    """The same weights as `tiny_models_fp32`, as a diffusers folder."""
    return write_diffusers_folder(
        tmp_path_factory.mktemp("diffusers") / "Z-Image-Turbo", TINY, dtype=torch.float32
    )
