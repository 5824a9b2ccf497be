"""The ControlNet nodes declare what ComfyUI declares (so the frontend draws the same widgets and the
official template's widget values map onto the same inputs)."""

from __future__ import annotations

import json

from zturbo.nodes.registry import default_registry


def info(name: str) -> dict:
    return json.loads(json.dumps(default_registry().object_info_for(name)))


def test_model_patch_loader():
    entry = info("ModelPatchLoader")
    assert entry["input"]["required"] == {"name": [[]]}
    assert entry["output"] == ["MODEL_PATCH"] and entry["category"] == "model/loaders"


def test_appliers():
    z = info("ZImageFunControlnet")
    assert list(z["input"]["required"]) == ["model", "model_patch", "vae", "strength"]
    assert list(z["input"]["optional"]) == ["image", "inpaint_image", "mask"]
    assert z["input"]["required"]["strength"] == [
        "FLOAT",
        {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01},
    ]
    q = info("QwenImageDiffsynthControlnet")
    assert list(q["input"]["required"]) == ["model", "model_patch", "vae", "image", "strength"]
    assert list(q["input"]["optional"]) == ["mask"] and q["output"] == ["MODEL"]


def test_canny():
    entry = info("Canny")
    low = entry["input"]["required"]["low_threshold"]
    assert low == ["FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}]
    assert entry["input"]["required"]["high_threshold"][1]["default"] == 0.8
    assert entry["category"] == "image/filters" and entry["output"] == ["IMAGE"]
