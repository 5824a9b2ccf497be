"""UI → API conversion: the official template unmodified, and synthetic graphs for each frontend rule."""

from __future__ import annotations

import json
import random
from pathlib import Path

import comfyui_workflow_templates_json
import pytest

from zturbo.errors import InputError
from zturbo.graph.convert import apply_control_after_generate, ui_to_api
from zturbo.nodes.registry import default_registry

TEMPLATES = Path(comfyui_workflow_templates_json.__file__).parent / "templates"
TURBO_PROMPT = (
    "Latina female with thick wavy hair, harbor boats and pastel houses behind. "
    "Breezy seaside light, warm tones, cinematic close-up. "
)


def node(node_id, type_, widgets=None, inputs=(), outputs=(), mode=0, **extra):
    """A UI node; `inputs`/`outputs` are (name, type, link-or-links) triples."""
    return {
        "id": node_id,
        "type": type_,
        "mode": mode,
        "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
        "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs],
        "widgets_values": widgets if widgets is not None else [],
        **extra,
    }


def workflow(nodes, links, subgraphs=()):
    return {"nodes": nodes, "links": links, "definitions": {"subgraphs": list(subgraphs)}, "version": 0.4}


def test_official_turbo_template_converts_to_the_expected_api_graph(turbo_template):
    api = ui_to_api(turbo_template, default_registry())
    assert api == {
        "9": {
            "inputs": {"filename_prefix": "z-image-turbo", "images": ["57:8", 0]},
            "class_type": "SaveImage",
            "_meta": {"title": "Save Image"},
        },
        "57:30": {
            "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"},
            "class_type": "CLIPLoader",
            "_meta": {"title": "Load CLIP"},
        },
        "57:29": {
            "inputs": {"vae_name": "ae.safetensors"},
            "class_type": "VAELoader",
            "_meta": {"title": "Load VAE"},
        },
        "57:33": {
            "inputs": {"conditioning": ["57:27", 0]},
            "class_type": "ConditioningZeroOut",
            "_meta": {"title": "ConditioningZeroOut"},
        },
        "57:8": {
            "inputs": {"samples": ["57:3", 0], "vae": ["57:29", 0]},
            "class_type": "VAEDecode",
            "_meta": {"title": "VAE Decode"},
        },
        "57:28": {
            "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"},
            "class_type": "UNETLoader",
            "_meta": {"title": "Load Diffusion Model"},
        },
        "57:27": {
            "inputs": {"text": TURBO_PROMPT, "clip": ["57:30", 0]},
            "class_type": "CLIPTextEncode",
            "_meta": {"title": "CLIP Text Encode (Prompt)"},
        },
        "57:13": {
            "inputs": {"width": 1024, "height": 1024, "batch_size": 1},
            "class_type": "EmptySD3LatentImage",
            "_meta": {"title": "EmptySD3LatentImage"},
        },
        "57:11": {
            "inputs": {"shift": 3, "model": ["57:28", 0]},
            "class_type": "ModelSamplingAuraFlow",
            "_meta": {"title": "ModelSamplingAuraFlow"},
        },
        "57:3": {
            "inputs": {
                "seed": 0,
                "steps": 8,
                "cfg": 1,
                "sampler_name": "res_multistep",
                "scheduler": "simple",
                "denoise": 1,
                "model": ["57:11", 0],
                "positive": ["57:27", 0],
                "negative": ["57:33", 0],
                "latent_image": ["57:13", 0],
            },
            "class_type": "KSampler",
            "_meta": {"title": "KSampler"},
        },
    }


def test_base_template_with_outer_links_and_dynamic_combo_converts():
    wf = json.loads((TEMPLATES / "image_z_image.json").read_text())
    api = ui_to_api(wf, default_registry())
    assert api["76:68"]["inputs"] == {"width": ["94", 0], "height": ["94", 1], "batch_size": 1}
    assert api["94"]["inputs"] == {"aspect_ratio": "1:1 (Square)", "megapixels": 1, "multiple": 8}
    assert api["95"]["inputs"] == {
        "filename_prefix": "Z_image_base",
        "format": "png",
        "format.bit_depth": "8-bit",
        "format.input_color_space": "sRGB",
        "images": ["76:65", 0],
    }
    assert api["76:69"]["inputs"]["seed"] == 677498465340151
    assert api["76:71"]["inputs"]["text"] == ""
    assert "35" not in api and "86" not in api  # MarkdownNotes are UI-only


@pytest.mark.parametrize(
    "name", ["image_z_image_turbo_fun_union_controlnet.json", "image_z_image_turbo_int8.json"]
)
def test_other_z_image_templates_convert_without_errors(name):
    api = ui_to_api(json.loads((TEMPLATES / name).read_text()), default_registry())
    assert any(n["class_type"] == "KSampler" for n in api.values())


def _sampler_chain(mode=0):
    """EmptyLatentImage(1) → [LatentUpscaleBy(2), mode] → SaveImage-less VAEDecode(3)."""
    nodes = [
        node(1, "EmptyLatentImage", [512, 512, 1], outputs=[("LATENT", "LATENT", [10])]),
        node(
            2,
            "LatentUpscaleBy",
            ["bislerp", 2.0],
            inputs=[("samples", "LATENT", 10)],
            outputs=[("LATENT", "LATENT", [11])],
            mode=mode,
        ),
        node(
            3,
            "VAEDecode",
            inputs=[("samples", "LATENT", 11), ("vae", "VAE", None)],
            outputs=[("IMAGE", "IMAGE", [])],
        ),
    ]
    links = [[10, 1, 0, 2, 0, "LATENT"], [11, 2, 0, 3, 0, "LATENT"]]
    return workflow(nodes, links)


def test_bypassed_node_passes_its_same_type_input_through():
    api = ui_to_api(_sampler_chain(mode=4), default_registry())
    assert "2" not in api
    assert api["3"]["inputs"] == {"samples": ["1", 0]}


def test_muted_node_is_dropped_and_links_to_it_pruned():
    api = ui_to_api(_sampler_chain(mode=2), default_registry())
    assert set(api) == {"1", "3"}
    assert api["3"]["inputs"] == {}


def test_bypass_prefers_an_exact_type_when_the_same_slot_does_not_fit():
    nodes = [
        node(1, "LoadImage", ["a.png", "image"], outputs=[("IMAGE", "IMAGE", [20]), ("MASK", "MASK", [])]),
        node(5, "VAELoader", ["ae.safetensors"], outputs=[("VAE", "VAE", [21])]),
        node(
            2,
            "VAEEncode",
            inputs=[("vae", "VAE", 21), ("pixels", "IMAGE", 20)],
            outputs=[("IMAGE", "IMAGE", [22])],
            mode=4,
        ),
        node(3, "PreviewImage", inputs=[("images", "IMAGE", 22)]),
    ]
    links = [[20, 1, 0, 2, 1, "IMAGE"], [21, 5, 0, 2, 0, "VAE"], [22, 2, 0, 3, 0, "IMAGE"]]
    api = ui_to_api(workflow(nodes, links), default_registry())
    assert api["3"]["inputs"] == {"images": ["1", 0]}


def test_reroutes_and_notes_are_skipped():
    nodes = [
        node(1, "EmptySD3LatentImage", [256, 256, 2], outputs=[("LATENT", "LATENT", [30])]),
        node(7, "Reroute", inputs=[("", "*", 30)], outputs=[("", "LATENT", [31])]),
        node(8, "Reroute", inputs=[("", "*", 31)], outputs=[("", "LATENT", [32])]),
        node(9, "Note", ["remember this"]),
        node(3, "VAEDecode", inputs=[("samples", "LATENT", 32), ("vae", "VAE", None)]),
    ]
    links = [[30, 1, 0, 7, 0, "*"], [31, 7, 0, 8, 0, "*"], [32, 8, 0, 3, 0, "LATENT"]]
    api = ui_to_api(workflow(nodes, links), default_registry())
    assert set(api) == {"1", "3"}
    assert api["3"]["inputs"] == {"samples": ["1", 0]}


def test_primitive_node_value_is_copied_into_its_targets():
    nodes = [
        node(4, "PrimitiveNode", [1234, "randomize"], outputs=[("INT", "INT", [40, 41])]),
        node(
            5,
            "KSampler",
            [1, "fixed", 8, 1.0, "euler", "simple", 1.0],
            inputs=[("seed", "INT", 40)],
            outputs=[("LATENT", "LATENT", [])],
        ),
        node(
            6,
            "KSamplerAdvanced",
            ["enable", 7, "fixed", 8, 1.0, "euler", "simple", 0, 10000, "disable"],
            inputs=[("noise_seed", "INT", 41)],
        ),
    ]
    links = [[40, 4, 0, 5, 0, "INT"], [41, 4, 0, 6, 0, "INT"]]
    api = ui_to_api(workflow(nodes, links), default_registry())
    assert set(api) == {"5", "6"}
    assert api["5"]["inputs"]["seed"] == 1234
    assert api["6"]["inputs"]["noise_seed"] == 1234
    assert api["6"]["inputs"]["steps"] == 8 and api["6"]["inputs"]["end_at_step"] == 10000


def test_widget_values_skip_control_and_upload_extras():
    nodes = [
        node(1, "KSampler", [42, "increment", 9, 2.5, "euler", "normal", 0.5]),
        node(2, "LoadImage", ["cat.png", "image"]),
        node(3, "CLIPLoader", ["qwen_3_4b.safetensors", "lumina2"]),
    ]
    api = ui_to_api(workflow(nodes, []), default_registry())
    assert api["1"]["inputs"] == {
        "seed": 42,
        "steps": 9,
        "cfg": 2.5,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 0.5,
    }
    assert api["2"]["inputs"] == {"image": "cat.png"}
    assert api["3"]["inputs"] == {
        "clip_name": "qwen_3_4b.safetensors",
        "type": "lumina2",
    }  # optional left out


def test_titles_and_unknown_types_are_kept_for_validation():
    nodes = [node(1, "SaveImage", ["x"], title="My save"), node(2, "SomeCustomNode", [1, 2])]
    api = ui_to_api(workflow(nodes, []), default_registry())
    assert api["1"]["_meta"] == {"title": "My save"}
    assert api["2"] == {"inputs": {}, "class_type": "SomeCustomNode", "_meta": {"title": "SomeCustomNode"}}


def _inner_subgraph():
    """Subgraph 'inner': input `scale` (FLOAT) → LatentUpscaleBy.scale_by; latent in → out."""
    return {
        "id": "inner-uuid",
        "name": "inner",
        "inputs": [
            {"name": "samples", "type": "LATENT", "linkIds": [1]},
            {"name": "scale", "type": "FLOAT", "linkIds": [2]},
        ],
        "outputs": [{"name": "LATENT", "type": "LATENT", "linkIds": [3]}],
        "nodes": [
            node(
                10,
                "LatentUpscaleBy",
                ["nearest-exact", 1.25],
                inputs=[("samples", "LATENT", 1), ("scale_by", "FLOAT", 2)],
                outputs=[("LATENT", "LATENT", [3])],
            ),
        ],
        "links": [
            {
                "id": 1,
                "origin_id": -10,
                "origin_slot": 0,
                "target_id": 10,
                "target_slot": 0,
                "type": "LATENT",
            },
            {"id": 2, "origin_id": -10, "origin_slot": 1, "target_id": 10, "target_slot": 1, "type": "FLOAT"},
            {
                "id": 3,
                "origin_id": 10,
                "origin_slot": 0,
                "target_id": -20,
                "target_slot": 0,
                "type": "LATENT",
            },
        ],
    }


def _outer_subgraph():
    """Subgraph 'outer': contains an 'inner' instance (id 20) and a muted node; passes latents through."""
    return {
        "id": "outer-uuid",
        "name": "outer",
        "inputs": [{"name": "samples", "type": "LATENT", "linkIds": [5]}],
        "outputs": [{"name": "LATENT", "type": "LATENT", "linkIds": [6]}],
        "nodes": [
            node(20, "inner-uuid", inputs=[("samples", "LATENT", 5)], outputs=[("LATENT", "LATENT", [6])]),
            node(21, "EmptyLatentImage", [64, 64, 1], mode=2),
        ],
        "links": [
            {
                "id": 5,
                "origin_id": -10,
                "origin_slot": 0,
                "target_id": 20,
                "target_slot": 0,
                "type": "LATENT",
            },
            {
                "id": 6,
                "origin_id": 20,
                "origin_slot": 0,
                "target_id": -20,
                "target_slot": 0,
                "type": "LATENT",
            },
        ],
    }


def test_nested_subgraphs_flatten_with_path_ids_and_promoted_values():
    nodes = [
        node(1, "EmptySD3LatentImage", [128, 128, 1], outputs=[("LATENT", "LATENT", [50])]),
        node(30, "outer-uuid", inputs=[("samples", "LATENT", 50)], outputs=[("LATENT", "LATENT", [51])]),
        node(31, "outer-uuid", inputs=[("samples", "LATENT", 51)], outputs=[("LATENT", "LATENT", [52])]),
        node(3, "VAEDecode", inputs=[("samples", "LATENT", 52), ("vae", "VAE", None)]),
    ]
    links = [[50, 1, 0, 30, 0, "LATENT"], [51, 30, 0, 31, 0, "LATENT"], [52, 31, 0, 3, 0, "LATENT"]]
    api = ui_to_api(workflow(nodes, links, [_inner_subgraph(), _outer_subgraph()]), default_registry())
    assert set(api) == {"1", "30:20:10", "31:20:10", "3"}
    assert api["30:20:10"]["inputs"] == {
        "upscale_method": "nearest-exact",
        "scale_by": 1.25,
        "samples": ["1", 0],
    }
    assert api["31:20:10"]["inputs"]["samples"] == ["30:20:10", 0]
    assert api["3"]["inputs"] == {"samples": ["31:20:10", 0]}


def test_subgraph_instance_widget_values_override_the_inner_value():
    inner = _inner_subgraph()
    instance = node(40, "inner-uuid", [3.0], inputs=[("samples", "LATENT", 60), ("scale", "FLOAT", None)])
    instance["inputs"][1]["widget"] = {"name": "scale"}
    nodes = [node(1, "EmptySD3LatentImage", [128, 128, 1], outputs=[("LATENT", "LATENT", [60])]), instance]
    api = ui_to_api(workflow(nodes, [[60, 1, 0, 40, 0, "LATENT"]], [inner]), default_registry())
    assert api["40:10"]["inputs"]["scale_by"] == 3.0


def test_missing_link_is_reported_clearly():
    nodes = [node(3, "VAEDecode", inputs=[("samples", "LATENT", 99)])]
    with pytest.raises(InputError, match="link 99"):
        ui_to_api(workflow(nodes, []), default_registry())


def test_apply_control_after_generate_changes_the_ui_state_only_after_queueing(turbo_template):
    registry = default_registry()
    before = ui_to_api(turbo_template, registry)
    after_wf = apply_control_after_generate(turbo_template, registry, rng=random.Random(1))
    assert ui_to_api(turbo_template, registry) == before  # input untouched: first run uses saved values
    after = ui_to_api(after_wf, registry)
    assert after["57:3"]["inputs"]["seed"] != before["57:3"]["inputs"]["seed"]  # "randomize"
    assert 0 <= after["57:3"]["inputs"]["seed"] <= 1125899906842624
    del after["57:3"]["inputs"]["seed"], before["57:3"]["inputs"]["seed"]
    assert after == before


def test_apply_control_increment_fixed_and_primitive():
    nodes = [
        node(1, "KSampler", [10, "increment", 8, 1.0, "euler", "simple", 1.0]),
        node(2, "KSamplerAdvanced", ["enable", 10, "fixed", 8, 1.0, "euler", "simple", 0, 10000, "disable"]),
        node(4, "PrimitiveNode", [5, "decrement"], outputs=[("INT", "INT", [70])]),
        node(5, "KSampler", [0, "fixed", 8, 1.0, "euler", "simple", 1.0], inputs=[("seed", "INT", 70)]),
    ]
    after = apply_control_after_generate(workflow(nodes, [[70, 4, 0, 5, 0, "INT"]]), default_registry())
    values = {n["id"]: n["widgets_values"] for n in after["nodes"]}
    assert values[1][0] == 11 and values[2][1] == 10 and values[4][0] == 4


def _with_proxy_values(template):
    """The turbo template as a newer frontend saves it after editing the promoted widgets."""
    wf = json.loads(json.dumps(template))
    instance = next(n for n in wf["nodes"] if n["id"] == 57)
    instance["widgets_values"] = ["hello", 512, 256, 99, 4, "z_image_turbo_bf16.safetensors",
                                  "qwen_3_4b.safetensors", "ae.safetensors", "increment"]  # fmt: skip
    return wf


def test_proxy_widget_values_on_the_instance_override_inner_values(turbo_template):
    api = ui_to_api(_with_proxy_values(turbo_template), default_registry())
    assert api["57:27"]["inputs"]["text"] == "hello"
    assert (api["57:13"]["inputs"]["width"], api["57:13"]["inputs"]["height"]) == (512, 256)
    assert (api["57:3"]["inputs"]["seed"], api["57:3"]["inputs"]["steps"]) == (99, 4)
    assert "control_after_generate" not in api["57:3"]["inputs"]


def test_apply_control_advances_proxied_seeds(turbo_template):
    after = apply_control_after_generate(_with_proxy_values(turbo_template), default_registry())
    assert ui_to_api(after, default_registry())["57:3"]["inputs"]["seed"] == 100


def test_primitive_node_forms():
    """PrimitiveNodes feeding a subgraph input, a node inside a subgraph, a combo and a multiline
    string through a Reroute; an unset one leaves the target's own widget value."""
    inner = {
        "id": "sub-1",
        "name": "inner",
        "inputs": [{"name": "seed", "type": "INT", "linkIds": [90]}],
        "outputs": [],
        "nodes": [
            node(1, "KSampler", [3, "fixed", 8, 1.0, "euler", "simple", 1.0],
                 inputs=[("seed", "INT", 90), ("sampler_name", "COMBO", 91)]),
            node(2, "PrimitiveNode", ["res_multistep", "fixed"], outputs=[("COMBO", "COMBO", [91])]),
        ],
        "links": [
            {"id": 90, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "INT"},
            {"id": 91, "origin_id": 2, "origin_slot": 0, "target_id": 1, "target_slot": 1, "type": "COMBO"},
        ],
    }  # fmt: skip
    nodes = [
        node(10, "PrimitiveNode", [77, "randomize"], outputs=[("INT", "INT", [50])]),
        node(11, "sub-1", [], inputs=[("seed", "INT", 50)]),
        node(12, "PrimitiveNode", ["a lighthouse\nat dusk"], outputs=[("STRING", "STRING", [51])]),
        node(13, "Reroute", [], inputs=[("", "*", 51)], outputs=[("", "STRING", [52])]),
        node(14, "CLIPTextEncode", ["own text"], inputs=[("text", "STRING", 52)]),
        node(15, "PrimitiveNode", [], outputs=[("INT", "INT", [53])]),
        node(16, "EmptySD3LatentImage", [640, 512, 1], inputs=[("width", "INT", 53)]),
        node(17, "MarkdownNote", ["# notes"]),
    ]
    links = [[50, 10, 0, 11, 0, "INT"], [51, 12, 0, 13, 0, "STRING"], [52, 13, 0, 14, 0, "STRING"],
             [53, 15, 0, 16, 0, "INT"]]  # fmt: skip
    api = ui_to_api(workflow(nodes, links, [inner]), default_registry())
    assert set(api) == {"11:1", "14", "16"}
    assert api["11:1"]["inputs"]["seed"] == 77 and api["11:1"]["inputs"]["sampler_name"] == "res_multistep"
    assert api["14"]["inputs"]["text"] == "a lighthouse\nat dusk"
    assert api["16"]["inputs"]["width"] == 640
