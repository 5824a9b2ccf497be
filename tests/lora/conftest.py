"""Tiny reference models' weights and shapes for the LoRA tests (session-wide: built once)."""

from __future__ import annotations

import pytest

from zturbo.testing.synthetic import TINY, build_random_dit, build_random_text_encoder


@pytest.fixture(scope="session")
def dit_base():
    """fp32 reference-layout (diffusers) weights of the tiny DiT."""
    return build_random_dit(TINY.dit)[1]


@pytest.fixture(scope="session")
def dit_shapes(dit_base):
    return {k: tuple(v.shape) for k, v in dit_base.items()}


@pytest.fixture(scope="session")
def te_base():
    sd = build_random_text_encoder(TINY.text_encoder)[1]
    return {k: v for k, v in sd.items() if k != "embed_tokens.weight"}


@pytest.fixture(scope="session")
def te_shapes(te_base):
    return {k: tuple(v.shape) for k, v in te_base.items()}
