"""Shared fixtures for graph tests: folders with model files named like the real ones, a fake engine."""

from __future__ import annotations

import json
from pathlib import Path

import comfyui_workflow_templates_json
import pytest
from fake_engine import FakeEngine

from zturbo.graph.executor import PromptExecutor
from zturbo.nodes.context import ExecutionContext
from zturbo.nodes.registry import default_registry

TEMPLATES = Path(comfyui_workflow_templates_json.__file__).parent / "templates"
MODEL_FILES = {
    "diffusion_models": ["z_image_turbo_bf16.safetensors", "z_image_bf16.safetensors"],
    "text_encoders": ["qwen_3_4b.safetensors"],
    "vae": ["ae.safetensors"],
}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def context(tmp_path: Path, engine: FakeEngine) -> ExecutionContext:
    models = tmp_path / "models"
    for folder, names in MODEL_FILES.items():
        (models / folder).mkdir(parents=True)
        for name in names:
            (models / folder / name).write_bytes(b"")
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir()
    return ExecutionContext(
        models_dir=models,
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
        engine=engine,
    )


@pytest.fixture
def executor(context: ExecutionContext) -> PromptExecutor:
    return PromptExecutor(default_registry(), context)


@pytest.fixture
def turbo_template() -> dict:
    return json.loads((TEMPLATES / "image_z_image_turbo.json").read_text())
