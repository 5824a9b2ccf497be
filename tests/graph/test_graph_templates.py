"""Every official ComfyUI workflow that uses the Z-Image models, run unmodified through `run_workflow`
(what `zturbo run` calls) on empty files named like the real ones, with the fake engine.

Those made only of nodes zturbo has run to their saved images; the rest fail validation with one
message that lists every node type zturbo lacks and why. The expected lists say who would unblock
each: a core node zturbo does not implement yet, or an API/custom node it does not provide.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import comfyui_workflow_templates_json
import pytest

from zturbo.errors import InputError
from zturbo.graph.run import run_workflow
from zturbo.nodes.registry import default_registry

TEMPLATES = Path(comfyui_workflow_templates_json.__file__).parent / "templates"

RUNNABLE = [
    "image_z_image_turbo", "image_z_image_turbo_int8", "image_z_image", "image_z_image_int8", "basic_switch_node",
]  # fmt: skip
# Run unmodified on the real engine and tiny files elsewhere (they need real pixels in and out).
REAL_ENGINE = {
    "utility_z_image_turbo_2k_upscaler.app": "tests/test_upscale.py",
    "image_z_image_turbo_fun_union_controlnet": "tests/test_controlnet_workflows.py",
}
CORE = "zturbo does not implement this ComfyUI node yet"
API = "ComfyUI API node: zturbo does not provide it"
CUSTOM = "custom node (not part of ComfyUI): zturbo does not provide it"
BLOCKED = {
    "template_rob_realistic_2k_images_quick_variations": {
        "ImageRemoveAlpha+": CUSTOM, "AILab_QwenVL": CUSTOM, "GrokImageNode": API,
    },
    "templates_rob_realistic_2k_images_quick_variations.app": {
        "ImageRemoveAlpha+": CUSTOM, "AILab_QwenVL": CUSTOM, "GrokImageNode": API,
    },
    "templates_ohneis_i2v": {"GeminiImage2Node": API, "KlingImageToVideoWithAudio": API, "SaveVideo": CORE},
    "utility_pid_latent_upscale_dit": {"EmptyChromaRadianceLatentImage": CORE, "PiDConditioning": CORE},
}  # fmt: skip
FOLDER_OF = {
    "UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders", "VAELoader": "vae",
    "LoraLoaderModelOnly": "loras",
}  # fmt: skip


def z_image_templates() -> list[str]:
    """Every template whose diffusion model is a Z-Image file (the set the two lists must cover)."""
    found = []
    for path in sorted(TEMPLATES.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        if not path.name.startswith("index") and re.search(r'"z_image[^"/]*\.safetensors"', text):
            found.append(path.stem)
    return found


def load(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text(encoding="utf-8"))


def provide_model_files(context, workflow: dict) -> None:
    """Empty files under the names the workflow's loaders ask for (the fake engine never reads them)."""
    nodes = list(workflow["nodes"])
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        nodes += sub["nodes"]
    for node in nodes:
        folder = FOLDER_OF.get(node.get("type"))
        if folder and node.get("widgets_values"):
            path = context.models_dir / folder / node["widgets_values"][0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def test_the_lists_cover_every_z_image_template():
    assert sorted(RUNNABLE + list(BLOCKED) + list(REAL_ENGINE)) == z_image_templates()
    assert len(z_image_templates()) == 11


@pytest.mark.parametrize("name", RUNNABLE)
def test_template_runs_unmodified(name, context, engine):
    workflow = load(name)
    provide_model_files(context, workflow)
    result = run_workflow(workflow, context=context)
    assert result.status_str == "success", result.error
    images = [i for out in result.outputs.values() for i in out.get("images", [])]
    assert images and all((context.output_dir / i["subfolder"] / i["filename"]).is_file() for i in images)
    assert engine.calls["sample"] == 1


@pytest.mark.parametrize("name", sorted(BLOCKED))
def test_template_lacking_nodes_names_every_one_and_why(name, context):
    workflow = load(name)
    provide_model_files(context, workflow)
    with pytest.raises(InputError) as caught:
        run_workflow(workflow, context=context)
    message = str(caught.value)
    expected = BLOCKED[name]
    if len(expected) > 1:
        assert message.startswith(f"{len(expected)} node types in this workflow are not available in zturbo:")
    lines = (
        [line for line in message.splitlines() if line.startswith("  - ")] if len(expected) > 1 else [message]
    )
    assert len(lines) == len(expected), message
    for class_type, reason in expected.items():
        assert any(f"{class_type} (node" in line or f"({class_type})" in line for line in lines), message
        assert any(class_type in line and reason in line for line in lines), (class_type, message)


def test_switch_template_runs_only_the_chosen_branch(context, engine):
    """basic_switch_node: the switch, the primitives, the LoRA loader and PreviewAny run, and the
    branch not chosen is never executed."""
    workflow = load("basic_switch_node")
    provide_model_files(context, workflow)
    registry = default_registry()
    events: list[tuple[str, dict]] = []
    result = run_workflow(
        workflow, context=context, registry=registry, on_event=lambda e, d: events.append((e, d))
    )
    assert result.status_str == "success", result.error
    assert result.outputs["4"]["text"] == ["false"] and result.outputs["8"]["text"] == ["true"]
    assert result.outputs["63"]["images"]
    ran = {d["node"] for e, d in events if e == "executing"}
    assert {"68", "62", "3", "6"} <= ran  # the chosen branches
    assert not {"67", "2", "7"} & ran  # the others never run (lazy inputs)
    assert engine.calls["sample"] == 1
