"""Executor with the fake engine: order, events, cache across prompts, failures and interrupts."""

from __future__ import annotations

import io
import json
import threading

import pytest
from PIL import Image

from zturbo.graph.convert import ui_to_api
from zturbo.nodes.registry import default_registry

DOWNSTREAM_OF_SEED = {"57:3", "57:8", "9"}


class Recorder:
    """Collects emitted events; optionally runs a hook on each."""

    def __init__(self, hook=None):
        self.events: list[tuple[str, dict]] = []
        self.hook = hook

    def __call__(self, event, data):
        self.events.append((event, data))
        if self.hook:
            self.hook(event, data)

    def names(self):
        return [e for e, _ in self.events]

    def data(self, name):
        return [d for e, d in self.events if e == name]

    def executing(self):
        return [d["node"] for d in self.data("executing") if d["node"] is not None]


@pytest.fixture
def prompt(turbo_template):
    api = ui_to_api(turbo_template, default_registry())
    api["57:13"]["inputs"].update(width=64, height=48)
    return api


def run(executor, prompt, prompt_id="p", **kw):
    recorder = kw.pop("recorder", None) or Recorder()
    outputs = kw.pop("outputs", None) or executor.validate(prompt).outputs
    result = executor.execute(
        prompt, prompt_id, outputs=outputs, extra_data=kw.pop("extra_data", {}), emit=recorder, **kw
    )
    return result, recorder


def test_runs_in_dependency_order_with_comfyui_events(executor, prompt):
    result, rec = run(executor, prompt, "p1")
    order = rec.executing()
    assert sorted(order) == sorted(prompt)
    for node_id, node in prompt.items():
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert order.index(value[0]) < order.index(node_id)
    assert rec.names()[:2] == ["execution_start", "execution_cached"]
    # The end-of-prompt `executing: null` is the caller's (the server sends it after saving history).
    assert rec.names()[-1] == "execution_success" and None not in [d["node"] for d in rec.data("executing")]
    assert rec.data("executing")[0] == {"node": order[0], "display_node": order[0], "prompt_id": "p1"}
    executed = rec.data("executed")
    assert executed == [{"node": "9", "display_node": "9", "output": result.outputs["9"], "prompt_id": "p1"}]
    assert result.status_str == "success" and result.completed and not result.interrupted
    assert result.outputs == {
        "9": {"images": [{"filename": "z-image-turbo_00001_.png", "subfolder": "", "type": "output"}]}
    }
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached", "execution_success"]
    assert all("timestamp" in m[1] for m in result.messages)


def test_progress_events_come_from_the_sampler(executor, prompt):
    _, rec = run(executor, prompt, "p1")
    progress = rec.data("progress")
    assert progress == [{"value": i, "max": 8, "prompt_id": "p1", "node": "57:3"} for i in range(1, 9)]
    events = [e for e in rec.events if e[0] != "progress_state"]
    names = [e for e, _ in events]
    first, last = names.index("progress"), len(names) - 1 - names[::-1].index("progress")
    assert events[first - 1][1]["node"] == "57:3" and names[last + 1] == "executing"


def test_progress_state_at_every_node_start_update_and_finish(executor, prompt):
    _, rec = run(executor, prompt, "p1")
    states = rec.data("progress_state")
    order = rec.executing()
    # ComfyUI's count: one at each node's start and finish, one per progress update.
    assert len(states) == 2 * len(order) + len(rec.data("progress"))
    assert all(s["prompt_id"] == "p1" for s in states)
    last = states[-1]["nodes"]
    assert set(last) == set(order) and {n["state"] for n in last.values()} == {"finished"}
    sampler = last["57:3"]
    assert sampler == {
        "value": 8,
        "max": 8,
        "state": "finished",
        "node_id": "57:3",
        "prompt_id": "p1",
        "display_node_id": "57:3",
        "parent_node_id": None,
        "real_node_id": "57:3",
    }
    mid = next(s["nodes"] for s in states if s["nodes"].get("57:3", {}).get("value") == 3)
    assert mid["57:3"]["state"] == "running" and mid["57:3"]["max"] == 8
    assert set(mid) == set(order[: order.index("57:3") + 1])  # pending nodes are not listed


def test_changing_only_the_seed_reruns_only_the_sampler_and_downstream(executor, prompt, engine):
    run(executor, prompt, "p1")
    prompt["57:3"]["inputs"]["seed"] = 123
    result, rec = run(executor, prompt, "p2")
    cached = rec.data("execution_cached")[0]
    assert set(cached["nodes"]) == set(prompt) - DOWNSTREAM_OF_SEED
    assert set(rec.executing()) == DOWNSTREAM_OF_SEED
    assert engine.loads == {"dit": 1, "text_encoder": 1, "vae": 1}  # models stayed loaded
    assert result.outputs["9"]["images"][0]["filename"] == "z-image-turbo_00002_.png"


def test_identical_prompt_is_fully_cached_and_reports_its_outputs(executor, prompt):
    first, _ = run(executor, prompt, "p1")
    second, rec = run(executor, prompt, "p2")
    assert set(rec.data("execution_cached")[0]["nodes"]) == set(prompt)
    assert rec.executing() == []
    assert second.outputs == first.outputs
    assert rec.data("executed")[0]["output"] == first.outputs["9"]


def test_free_clears_the_cache(executor, prompt, engine):
    run(executor, prompt, "p1")
    executor.free(unload_models=True)
    _, rec = run(executor, prompt, "p2")
    assert rec.data("execution_cached")[0]["nodes"] == []
    assert engine.loads["dit"] == 2


def test_a_failing_node_fails_its_prompt_only(executor, prompt, engine):
    engine.fail_sampling = True
    result, rec = run(executor, prompt, "bad")
    assert result.status_str == "error" and not result.completed and not result.interrupted
    error = rec.data("execution_error")[0]
    assert error == result.error
    assert set(error) >= {
        "prompt_id",
        "node_id",
        "node_type",
        "executed",
        "exception_message",
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
        "timestamp",
    }
    assert (error["node_id"], error["node_type"]) == ("57:3", "KSampler")
    assert error["exception_message"] == "fake sampler exploded"
    assert error["exception_type"] == "RuntimeError"
    assert error["current_inputs"]["seed"] == [0]
    assert error["current_outputs"] == rec.executing()[:-1] and "57:28" in error["current_outputs"]
    assert rec.data("progress_state")[-1]["nodes"]["57:3"]["state"] == "error"
    assert "9" not in rec.executing() and "execution_success" not in rec.names()
    assert rec.events[-1][0] == "execution_error"
    engine.fail_sampling = False
    good, rec2 = run(executor, prompt, "good")
    assert good.status_str == "success"
    assert "57:28" in rec2.data("execution_cached")[0]["nodes"]  # work done before the failure is kept


def test_interrupt_inside_a_progress_callback(executor, prompt):
    stop = threading.Event()
    rec = Recorder(lambda e, d: stop.set() if e == "progress" and d["value"] == 3 else None)
    result, _ = run(executor, prompt, "p1", recorder=rec, interrupt=stop)
    assert result.interrupted and result.status_str == "error" and not result.completed
    interrupted = rec.data("execution_interrupted")[0]
    assert {k: interrupted[k] for k in ("prompt_id", "node_id", "node_type")} == {
        "prompt_id": "p1",
        "node_id": "57:3",
        "node_type": "KSampler",
    }
    assert "57:28" in interrupted["executed"]
    assert [d["value"] for d in rec.data("progress")] == [1, 2, 3]
    assert "execution_error" not in rec.names()


def test_interrupt_before_a_node_starts(executor, prompt):
    stop = threading.Event()
    stop.set()
    result, rec = run(executor, prompt, "p1", interrupt=stop)
    assert result.interrupted and rec.executing() == []


def test_previews_are_sent_as_jpeg(executor, prompt, engine):
    original = engine.sample

    def sample_with_preview(*args, progress, **kw):
        def with_image(value, maximum, _preview):
            progress(value, maximum, Image.new("RGB", (1024, 512), "red"))

        return original(*args, progress=with_image, **kw)

    engine.sample = sample_with_preview
    previews: list[bytes] = []
    run(executor, prompt, "p1", emit_preview=previews.append)
    assert len(previews) == 8 and previews[0][:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(previews[0])).size == (512, 256)


def test_png_carries_prompt_and_workflow_chunks(executor, prompt, turbo_template, context):
    run(executor, prompt, "p1", extra_data={"extra_pnginfo": {"workflow": turbo_template}})
    with Image.open(context.output_dir / "z-image-turbo_00001_.png") as img:
        assert img.size == (64, 48)
        assert json.loads(img.text["prompt"]) == prompt
        assert json.loads(img.text["workflow"]) == turbo_template


def test_load_image_reruns_when_the_file_changes(executor, context):
    path = context.input_dir / "in.png"
    Image.new("RGB", (16, 16), "blue").save(path)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    run(executor, prompt, "a")
    _, rec = run(executor, prompt, "b")
    assert rec.executing() == []
    Image.new("RGB", (16, 16), "green").save(path)
    _, rec = run(executor, prompt, "c")
    assert rec.executing() == ["1", "2"]


def test_an_emitter_that_raises_does_not_fail_the_prompt(executor, prompt):
    def broken(event, data):
        raise ConnectionError("client went away")

    result = executor.execute(prompt, "p", outputs=["9"], extra_data={}, emit=broken)
    assert result.status_str == "success"


def test_unregistered_node_in_an_unvalidated_prompt_is_an_execution_error(executor):
    prompt = {
        "1": {"class_type": "Nope", "inputs": {}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    result, rec = run(executor, prompt, "p", outputs=["2"])
    assert result.status_str == "error" and rec.data("execution_error")[0]["node_id"] == "1"


def test_cycles_are_reported_not_looped(executor):
    prompt = {
        "1": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": ["2", 0], "upscale_method": "area", "scale_by": 1.0},
        },
        "2": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": ["1", 0], "upscale_method": "area", "scale_by": 1.0},
        },
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    result, rec = run(executor, prompt, "p", outputs=["3"])
    assert result.status_str == "error" and "cycle" in result.error["exception_message"]


def test_a_prefix_escaping_the_output_folder_fails_the_node_not_the_server(executor, prompt, context):
    prompt["9"]["inputs"]["filename_prefix"] = "../../escaped"
    result, rec = run(executor, prompt, "p")
    error = rec.data("execution_error")[0]
    assert (error["node_id"], error["exception_type"]) == ("9", "zturbo.errors.InputError")
    assert "'..'" in error["exception_message"]
    assert not list(context.output_dir.parent.glob("**/escaped*"))


def test_custom_sampling_graph_validates_and_runs(executor, engine):
    """SamplerCustomAdvanced fed by RandomNoise, CFGGuider (on a CFGNorm model), KSamplerSelect and
    BasicScheduler split in two: the typed NOISE/GUIDER/SAMPLER/SIGMAS links validate and run."""
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["2", 0]}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "CFGNorm", "inputs": {"model": ["1", 0], "strength": 1.0}},
        "6": {"class_type": "CFGGuider", "inputs": {"model": ["5", 0], "positive": ["3", 0], "negative": ["4", 0], "cfg": 2.0}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["5", 0], "scheduler": "simple", "steps": 4, "denoise": 1.0}},
        "10": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["9", 0], "step": 2}},
        "11": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "12": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["7", 0], "guider": ["6", 0], "sampler": ["8", 0], "sigmas": ["10", 0], "latent_image": ["11", 0]}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 1], "vae": ["13", 0]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "custom"}},
    }  # fmt: skip
    checked = executor.validate(prompt)
    assert checked.ok, (checked.error, checked.node_errors)
    result, _ = run(executor, prompt)
    assert result.status_str == "success", result.error
    assert result.outputs["15"]["images"][0]["filename"].startswith("custom_")
    wrong = {**prompt, "12": {**prompt["12"], "inputs": {**prompt["12"]["inputs"], "noise": ["8", 0]}}}
    errors = executor.validate(wrong).node_errors["12"]["errors"]
    assert errors[0]["type"] == "return_type_mismatch"  # a SAMPLER is not a NOISE
