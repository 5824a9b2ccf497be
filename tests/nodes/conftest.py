"""Fixtures for node tests: a context with temporary folders and a way to call one node."""

from __future__ import annotations

from pathlib import Path

import pytest

from zturbo.nodes.context import ExecutionContext, NodeContext


@pytest.fixture
def context(tmp_path: Path) -> ExecutionContext:
    for name in ("models", "output", "input", "temp"):
        (tmp_path / name).mkdir()
    return ExecutionContext(tmp_path / "models", tmp_path / "output", tmp_path / "input", tmp_path / "temp")


@pytest.fixture
def node_ctx(context: ExecutionContext) -> NodeContext:
    return NodeContext(
        execution=context,
        node_id="7",
        prompt_id="p",
        prompt={"7": {"class_type": "SaveImage", "inputs": {}}},
        extra_pnginfo={"workflow": {"nodes": []}},
    )
