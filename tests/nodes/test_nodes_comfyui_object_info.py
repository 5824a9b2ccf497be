"""Every node zturbo shares with ComfyUI declares the same inputs as a real ComfyUI's `/object_info`.

`fixtures/comfyui_object_info.json` was recorded from ComfyUI v0.33.0 (with city96's ComfyUI-GGUF
custom nodes), started on the CPU, then trimmed to the fields compared (`fixtures/trim_object_info.py`):
input sections, names, types, defaults, ranges, combo options, input order, outputs, category. It also
holds nodes zturbo does not have yet (other engineers' LoRA, image-input and upscale nodes), so they are
checked as soon as they are registered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from zturbo.nodes.registry import default_registry

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from trim_object_info import trim  # noqa: E402

RECORDED = json.loads((FIXTURES / "comfyui_object_info.json").read_text(encoding="utf-8"))
REGISTRY = default_registry()
SHARED = sorted(n for n in RECORDED["nodes"] if n in REGISTRY)


# Where zturbo differs on purpose (the input stays out of the comparison; the reason is the test's).
DEVIATIONS = {
    ("SaveImageAdvanced", "format"): "only the PNG format is offered: zturbo writes no EXR",
    ("VAELoader", "vae_name"): "no 'pixel_space' choice: Z-Image always decodes with the Flux VAE",
}


def _without_deviations(name: str, entry: dict) -> dict:
    for section in entry["input"].values():
        for input_name in list(section):
            if (name, input_name) in DEVIATIONS:
                section[input_name] = "deviation"
    return entry


def _without_file_lists(entry: dict, recorded: dict) -> dict:
    """Drop options the recording lists as "<files>" (model folders were empty when recording)."""
    entry = json.loads(json.dumps(entry))
    for section, inputs in recorded["input"].items():
        for name, (_kind, opts) in inputs.items():
            if opts.get("options") == "<files>" and name in entry["input"].get(section, {}):
                entry["input"][section][name][1].pop("options", None)
                recorded["input"][section][name][1].pop("options", None)
    return entry


def test_the_fixture_names_its_comfyui_version():
    assert RECORDED["recorded_from"]["comfyui_version"] == "0.33.0"
    assert len(SHARED) >= 50


@pytest.mark.parametrize("name", SHARED)
def test_node_matches_comfyui(name):
    recorded = json.loads(json.dumps(RECORDED["nodes"][name]))
    ours = trim(json.loads(json.dumps(REGISTRY.object_info_for(name))))
    ours = _without_file_lists(ours, recorded)
    assert _without_deviations(name, ours) == _without_deviations(name, recorded)
