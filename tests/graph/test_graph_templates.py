"""Every official ComfyUI workflow that uses the Z-Image models, run unmodified through `run_workflow`
(what `zturbo run` calls) on empty files named like the real ones, with the fake engine.

Those made only of nodes zturbo has run to their saved images; the rest fail validation with one
message that lists every node type zturbo lacks and why. The expected lists say who would unblock
each: a core node zturbo does not implement yet, or an API/custom node it does not provide.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import TEMPLATES

from zturbo.errors import InputError
from zturbo.graph.run import run_workflow
from zturbo.nodes.base import Node
from zturbo.nodes.registry import default_registry
from zturbo.nodes.schema import Combo, Float, Link, NodeSchema, Output

RUNNABLE = ["image_z_image_turbo", "image_z_image_turbo_int8", "image_z_image", "image_z_image_int8"]
CORE = "zturbo does not implement this ComfyUI node yet"
API = "ComfyUI API node: zturbo does not provide it"
CUSTOM = "custom node (not part of ComfyUI): zturbo does not provide it"
BLOCKED = {
    "image_z_image_turbo_fun_union_controlnet": {
        "Canny": CORE, "ModelPatchLoader": CORE, "QwenImageDiffsynthControlnet": CORE,
    },
    "basic_switch_node": {"LoraLoaderModelOnly": CORE},
    "template_rob_realistic_2k_images_quick_variations": {
        "ImageUpscaleWithModel": CORE, "UpscaleModelLoader": CORE, "ImageRemoveAlpha+": CUSTOM,
        "AILab_QwenVL": CUSTOM, "GrokImageNode": API,
    },
    "templates_rob_realistic_2k_images_quick_variations.app": {
        "ImageUpscaleWithModel": CORE, "UpscaleModelLoader": CORE, "ImageRemoveAlpha+": CUSTOM,
        "AILab_QwenVL": CUSTOM, "GrokImageNode": API,
    },
    "templates_ohneis_i2v": {"GeminiImage2Node": API, "KlingImageToVideoWithAudio": API, "SaveVideo": CORE},
    "utility_pid_latent_upscale_dit": {"EmptyChromaRadianceLatentImage": CORE, "PiDConditioning": CORE},
    "utility_z_image_turbo_2k_upscaler.app": {"ImageUpscaleWithModel": CORE, "UpscaleModelLoader": CORE},
}  # fmt: skip
FOLDER_OF = {"UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders", "VAELoader": "vae"}


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
            (context.models_dir / folder / node["widgets_values"][0]).touch()


def test_the_lists_cover_every_z_image_template():
    assert sorted(RUNNABLE + list(BLOCKED)) == z_image_templates()
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


class StubLoraLoaderModelOnly(Node):
    """TEST DOUBLE for the LoRA team's node (same inputs as ComfyUI's): passes the model on, marked."""

    schema = NodeSchema(
        name="LoraLoaderModelOnly",
        inputs=(Link("model", "MODEL"), Combo("lora_name", lambda ctx: ctx.list_models("loras") if ctx else []),
                Float("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01)),
        outputs=(Output("MODEL"),),
    )  # fmt: skip

    def execute(self, ctx, model, lora_name, strength_model):
        return ({**model, "lora": lora_name},)


def test_switch_template_runs_one_branch_once_lora_loading_exists(context, engine):
    """basic_switch_node waits only on LoraLoaderModelOnly; with a stand-in, the switch, the primitives
    and PreviewAny run, and the branch not chosen is never executed."""
    workflow = load("basic_switch_node")
    provide_model_files(context, workflow)
    (context.models_dir / "loras").mkdir()
    (context.models_dir / "loras" / "pixel_art_style_z_image_turbo.safetensors").touch()
    registry = default_registry()
    registry.register(StubLoraLoaderModelOnly)
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
