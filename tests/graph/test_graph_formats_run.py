"""Workflow files (API, UI, PNG) and `run_workflow` with --set edits."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image, PngImagePlugin

from zturbo.errors import InputError
from zturbo.graph.convert import apply_control_after_generate, ui_to_api
from zturbo.graph.formats import detect_format, load_workflow_data, load_workflow_file
from zturbo.graph.run import apply_sets, run_workflow
from zturbo.nodes.registry import default_registry


def small(template):
    """The official template at 64x64 (a UI edit of the inner latent node's widgets)."""
    wf = json.loads(json.dumps(template))
    inner = wf["definitions"]["subgraphs"][0]["nodes"]
    next(n for n in inner if n["type"] == "EmptySD3LatentImage")["widgets_values"][:2] = [64, 64]
    return wf


def write_png(path, **chunks):
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def test_detect_format(turbo_template):
    assert detect_format(turbo_template) == "ui"
    assert detect_format(ui_to_api(turbo_template, default_registry())) == "api"
    with pytest.raises(InputError, match="not a ComfyUI workflow"):
        detect_format({"hello": 1})


def test_load_api_ui_and_request_body_json(tmp_path, turbo_template):
    registry = default_registry()
    api = ui_to_api(turbo_template, registry)
    (tmp_path / "ui.json").write_text(json.dumps(turbo_template))
    (tmp_path / "api.json").write_text(json.dumps(api))
    assert load_workflow_file(tmp_path / "ui.json") == (api, turbo_template)
    assert load_workflow_file(tmp_path / "api.json") == (api, None)
    body = {"prompt": api, "extra_data": {"extra_pnginfo": {"workflow": turbo_template}}}
    assert load_workflow_data(body, registry) == (api, turbo_template)


def test_png_prefers_the_workflow_chunk(tmp_path, turbo_template):
    api = ui_to_api(turbo_template, default_registry())
    stale = {"1": {"class_type": "SaveImage", "inputs": {}}}
    write_png(tmp_path / "both.png", prompt=json.dumps(stale), workflow=json.dumps(turbo_template))
    write_png(tmp_path / "prompt.png", prompt=json.dumps(api))
    assert load_workflow_file(tmp_path / "both.png") == (api, turbo_template)
    assert load_workflow_file(tmp_path / "prompt.png") == (api, None)


def test_clear_errors_name_the_file(tmp_path):
    write_png(tmp_path / "a1111.png", parameters="a cat\nSteps: 8")
    (tmp_path / "broken.json").write_text("{nope")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"a1111\.png: this PNG carries no ComfyUI .*zturbo generate"):
        load_workflow_file(tmp_path / "a1111.png")
    with pytest.raises(InputError, match=r"broken\.json: invalid JSON .* line 1"):
        load_workflow_file(tmp_path / "broken.json")
    with pytest.raises(InputError, match=r"other\.json: not a ComfyUI workflow"):
        load_workflow_file(tmp_path / "other.json")
    with pytest.raises(InputError, match=r"missing\.json: no such file"):
        load_workflow_file(tmp_path / "missing.json")


def test_apply_sets_by_id_class_and_title(turbo_template):
    registry = default_registry()
    api = ui_to_api(turbo_template, registry)
    edited = apply_sets(
        api,
        [
            "57:3.seed=42",
            "KSampler.steps=4",
            "Load CLIP.device=cpu",
            "CLIPTextEncode.text=a red fox",
            "EmptySD3LatentImage.width=64",
        ],
        registry,
    )
    inputs = edited["57:3"]["inputs"]
    assert (inputs["seed"], inputs["steps"]) == (42, 4)
    assert edited["57:30"]["inputs"]["device"] == "cpu"
    assert edited["57:27"]["inputs"]["text"] == "a red fox"
    assert edited["57:13"]["inputs"]["width"] == 64
    assert api["57:3"]["inputs"]["seed"] == 0  # the original is left alone


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("KSampler.seeed=1", "has no input 'seeed'; inputs: model, seed"),
        ("Sampler.seed=1", "no node matches"),
        ("KSampler.steps=many", "not a valid INT"),
        ("KSampler.seed", "expected NODE.INPUT=VALUE"),
    ],
)
def test_apply_sets_errors(turbo_template, item, message):
    registry = default_registry()
    with pytest.raises(InputError, match=message):
        apply_sets(ui_to_api(turbo_template, registry), [item], registry)


def test_apply_sets_updates_ui_widgets_and_primitives():
    registry = default_registry()
    nodes = [
        {"id": 4, "type": "PrimitiveNode", "mode": 0, "widgets_values": [1, "fixed"],
         "outputs": [{"name": "INT", "type": "INT", "links": [40]}]},
        {"id": 5, "type": "KSampler", "mode": 0, "inputs": [{"name": "seed", "type": "INT", "link": 40}],
         "widgets_values": [1, "fixed", 8, 1.0, "euler", "simple", 1.0]},
    ]  # fmt: skip
    wf = {"nodes": nodes, "links": [[40, 4, 0, 5, 0, "INT"]]}
    prompt = ui_to_api(wf, registry)
    edited = apply_sets(prompt, ["5.seed=9", "5.steps=3"], registry, wf)
    assert edited["5"]["inputs"]["seed"] == 9
    assert nodes[0]["widgets_values"][0] == 9 and nodes[1]["widgets_values"][2] == 3
    assert ui_to_api(wf, registry) == edited


def test_apply_sets_refuses_ambiguous_selectors():
    registry = default_registry()
    prompt = {"1": {"class_type": "KSampler", "inputs": {}}, "2": {"class_type": "KSampler", "inputs": {}}}
    with pytest.raises(InputError, match="matches nodes 1, 2; use a node id"):
        apply_sets(prompt, ["KSampler.seed=3"], registry)


def test_run_workflow_runs_the_unmodified_template_file(tmp_path, context, turbo_template):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(turbo_template))
    events = []
    result = run_workflow(
        path,
        sets=["57:13.width=64", "EmptySD3LatentImage.height=32", "KSampler.seed=7"],
        context=context,
        on_event=lambda e, d: events.append(e),
    )
    assert result.status_str == "success", result.error
    saved = context.output_dir / result.outputs["9"]["images"][0]["filename"]
    with Image.open(saved) as img:
        assert img.size == (64, 32)
        prompt = json.loads(img.text["prompt"])
        assert prompt["57:3"]["inputs"]["seed"] == 7
        workflow = json.loads(img.text["workflow"])  # edited like the prompt, so it reloads as it ran
        assert ui_to_api(workflow, default_registry()) == prompt
    assert turbo_template["definitions"]["subgraphs"][0]["nodes"][-1]["widgets_values"][0] == 0  # untouched
    assert events[0] == "execution_start" and "execution_success" in events


def test_run_workflow_from_a_png_it_made(context, turbo_template):
    first = run_workflow(small(turbo_template), context=context)
    png = context.output_dir / first.outputs["9"]["images"][0]["filename"]
    again = run_workflow(png, context=context)
    assert again.status_str == "success"
    assert again.outputs["9"]["images"][0]["filename"] == "z-image-turbo_00002_.png"


def test_run_workflow_uses_saved_values_then_control_moves_the_seed(context, turbo_template, engine):
    wf = small(turbo_template)
    run_workflow(wf, context=context)
    next_wf = apply_control_after_generate(wf, default_registry(), rng=random.Random(3))
    result = run_workflow(next_wf, context=context)
    assert result.status_str == "success" and engine.calls["sample"] == 2


def test_run_workflow_rejects_invalid_prompts_readably(context, turbo_template):
    with pytest.raises(InputError, match=r"node 57:3 \(KSampler\): Value 0 smaller than min of 1: steps"):
        run_workflow(small(turbo_template), sets=["KSampler.steps=0"], context=context)


def test_apply_sets_updates_proxied_widget_values(turbo_template):
    registry = default_registry()
    wf = json.loads(json.dumps(turbo_template))
    instance = next(n for n in wf["nodes"] if n["id"] == 57)
    instance["widgets_values"] = ["hi", 64, 64, 1, 8, "z_image_turbo_bf16.safetensors",
                                  "qwen_3_4b.safetensors", "ae.safetensors", "fixed"]  # fmt: skip
    edited = apply_sets(ui_to_api(wf, registry), ["KSampler.seed=5"], registry, wf)
    assert instance["widgets_values"][3] == 5
    assert ui_to_api(wf, registry) == edited
