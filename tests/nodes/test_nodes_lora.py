"""LoraLoader / LoraLoaderModelOnly in a workflow run by `zturbo run`, on the real engine (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zturbo.cli import app
from zturbo.nodes.context import ExecutionContext
from zturbo.nodes.registry import default_registry
from zturbo.testing.lora_files import (
    block_modules,
    dit_shapes,
    random_factors,
    text_encoder_shapes,
    write_lora,
)

runner = CliRunner()


def prompt(lora_nodes: dict, model_ref: list, clip_ref: list) -> dict:
    """The official Turbo graph (API format) with LoRA nodes between the loaders and their users."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        **lora_nodes,
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": model_ref, "shift": 3.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": "a lighthouse"}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "8": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0], "seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                "scheduler": "simple", "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["7", 0],
                "denoise": 1.0,
            },
        },
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "lora"}},
    }


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora_models")
    shutil.copytree(tiny_models, root, dirs_exist_ok=True)
    dit = random_factors(dit_shapes(), block_modules(("layers",), (0, 1)), rank=4, alpha=4.0, seed=11)
    te = random_factors(text_encoder_shapes(), ["layers.0.self_attn.q_proj"], rank=2, seed=12)
    write_lora(root / "loras" / "style" / "ink.safetensors", dit, "kohya", text_encoder=te)
    return root


def run(models: Path, graph: dict, tmp_path: Path, name: str) -> np.ndarray:
    workflow = tmp_path / f"{name}.json"
    workflow.write_text(json.dumps(graph), encoding="utf-8")
    out = tmp_path / name
    args = ["run", str(workflow), "--models-dir", str(models), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (png,) = [Path(p) for p in result.stdout.split() if p.endswith(".png")]
    with Image.open(png) as img:
        return np.asarray(img).astype(np.int16)


def test_lora_nodes_change_the_image_and_strength_zero_does_not(models, tmp_path):
    base = run(models, prompt({}, ["1", 0], ["2", 0]), tmp_path, "base")
    model_only = {
        "20": {"class_type": "LoraLoaderModelOnly",
               "inputs": {"model": ["1", 0], "lora_name": "style/ink.safetensors", "strength_model": 1.0}},
    }
    patched = run(models, prompt(model_only, ["20", 0], ["2", 0]), tmp_path, "model_only")
    assert np.abs(patched - base).max() > 0
    both = {
        "21": {"class_type": "LoraLoader",
               "inputs": {"model": ["1", 0], "clip": ["2", 0], "lora_name": "style/ink.safetensors",
                          "strength_model": 1.0, "strength_clip": 1.0}},
    }
    with_clip = run(models, prompt(both, ["21", 0], ["21", 1]), tmp_path, "both")
    assert np.abs(with_clip - patched).max() > 0  # the text-encoder part of the file applied too
    zero = dict(model_only)
    zero["20"] = {**zero["20"], "inputs": {**zero["20"]["inputs"], "strength_model": 0.0}}
    assert np.array_equal(run(models, prompt(zero, ["20", 0], ["2", 0]), tmp_path, "zero"), base)


def test_object_info_lists_the_loras_folder(models, tmp_path):
    context = ExecutionContext(models, tmp_path / "out", tmp_path / "in", tmp_path / "temp")
    info = default_registry(context).object_info()
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["style/ink.safetensors"]
    strength = info["LoraLoaderModelOnly"]["input"]["required"]["strength_model"]
    assert strength == ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                   "tooltip": strength[1]["tooltip"]}]
    assert info["LoraLoader"]["output"] == ["MODEL", "CLIP"]
