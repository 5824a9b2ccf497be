"""Shared fixtures: tiny random-weight Z-Image models written in every real layout.

The same seed gives the same weights in every layout, so loaders can be compared bit for bit and
zturbo can be compared with diffusers on identical weights.

Exact comparisons of two runs and weight memory (issue 12). Loading a file in its own dtype leaves
each weight a view of the memory-mapped file, at the file's byte offset (safetensors packs tensors
back to back: the offset is a multiple of the element size, no more); casting (a bf16 file computed in fp32) or
dequantizing allocates a fresh tensor, which torch aligns to 64 bytes, as are the slots a streamed
block is copied into. MKL's fp32 GEMV (a GEMM with one row: the timestep MLP and the adaLN modulations
at batch 1) rounds differently depending on the weight's address on some CPUs: on an AMD EPYC, and on
Intel under `MKL_ENABLE_INSTRUCTIONS=SSE4_2` or `AVX` (measured: only the address mod 16 matters). So
a mapped weight and an aligned copy of it give different bits, which is a reordering of fp32 sums, not
a bug. A test asserting bit equality between two runs gives both the same weight memory: the same
file loaded the same way on both sides (mapped at the same offsets), weights that are all fresh
allocations (`tiny_models` computed in fp32), or copies made with `fresh_weights`.
`tests/test_portability.py` reruns the exposed checks on those MKL code paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

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


def copy_weights(*modules: nn.Module) -> None:
    """Point every parameter and buffer of `modules` at a fresh (64-byte-aligned) copy of itself."""
    with torch.no_grad():
        for module in modules:
            for sub in module.modules():
                for param in sub._parameters.values():
                    if param is not None:
                        param.data = param.data.clone()
                for name, buf in sub._buffers.items():
                    if buf is not None:
                        sub._buffers[name] = buf.clone()


@pytest.fixture(scope="session")
def fresh_weights():
    """`fresh_weights(*modules)`: their weights copied out of any memory-mapped file (see above)."""
    return copy_weights
