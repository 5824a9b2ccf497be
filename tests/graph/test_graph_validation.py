"""Validation: one test per error type, checked against ComfyUI's JSON shapes."""

from __future__ import annotations

import copy

import pytest

from zturbo.graph.convert import ui_to_api
from zturbo.nodes.registry import default_registry

PROMPT_ERROR_KEYS = {"type", "message", "details", "extra_info"}


@pytest.fixture
def prompt(turbo_template):
    return ui_to_api(turbo_template, default_registry())


def only_node_error(result, node_id):
    """The single error reported for `node_id`, after checking the node_errors entry's shape."""
    entry = result.node_errors[node_id]
    assert set(entry) == {"errors", "dependent_outputs", "class_type"}
    assert entry["dependent_outputs"] == ["9"]
    assert len(entry["errors"]) == 1
    error = entry["errors"][0]
    assert set(error) == PROMPT_ERROR_KEYS
    return error


def assert_failed_outputs(result):
    assert not result.ok and result.outputs == []
    assert set(result.error) == PROMPT_ERROR_KEYS
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert result.error["message"] == "Prompt outputs failed validation"


def test_valid_prompt(executor, prompt):
    result = executor.validate(prompt)
    assert (result.ok, result.error, result.node_errors, result.outputs) == (True, None, {}, ["9"])


def test_no_prompt(executor):
    result = executor.validate(None)
    assert not result.ok
    assert result.error == {
        "type": "no_prompt",
        "message": "No prompt provided",
        "details": "No prompt provided",
        "extra_info": {},
    }


def test_missing_class_type_is_invalid_prompt(executor, prompt):
    del prompt["57:3"]["class_type"]
    result = executor.validate(prompt)
    assert result.error["type"] == "invalid_prompt"
    assert result.error["details"] == "Node ID '#57:3'"


def test_missing_node_type(executor, prompt):
    prompt["77"] = {"class_type": "FancyUpscaler", "inputs": {}, "_meta": {"title": "Fancy"}}
    result = executor.validate(prompt)
    assert not result.ok and result.node_errors == {} and result.outputs == []
    reason = "custom node (not part of ComfyUI): zturbo does not provide it"
    assert result.error == {
        "type": "missing_node_type",
        "message": f"Node 'Fancy' not found (FancyUpscaler): {reason}.",
        "details": "Node ID '#77'",
        "extra_info": {
            "node_id": "77",
            "class_type": "FancyUpscaler",
            "node_title": "Fancy",
            "missing_node_types": [
                {
                    "class_type": "FancyUpscaler",
                    "node_ids": ["77"],
                    "node_titles": ["Fancy"],
                    "kind": "custom",
                    "reason": reason,
                }
            ],
        },
    }


def test_every_missing_node_type_is_reported_with_its_kind(executor, prompt):
    prompt["77"] = {"class_type": "AILab_QwenVL", "inputs": {}}
    prompt["78"] = {"class_type": "GrokImageNode", "inputs": {}}
    prompt["79"] = {"class_type": "SaveVideo", "inputs": {"video": ["77", 0]}}
    prompt["80"] = {"class_type": "AILab_QwenVL", "inputs": {}}
    result = executor.validate(prompt)
    assert result.error["type"] == "missing_node_type"
    kinds = {
        m["class_type"]: (m["kind"], m["node_ids"]) for m in result.error["extra_info"]["missing_node_types"]
    }
    assert kinds == {
        "AILab_QwenVL": ("custom", ["77", "80"]),
        "GrokImageNode": ("api", ["78"]),
        "SaveVideo": ("core", ["79"]),
    }
    message = result.error["message"]
    assert message.startswith("3 node types in this workflow are not available in zturbo:")
    assert (
        "AILab_QwenVL (node #77, #80): custom node (not part of ComfyUI): zturbo does not provide it"
        in message
    )
    assert "GrokImageNode (node #78): ComfyUI API node: zturbo does not provide it" in message
    assert "SaveVideo (node #79): zturbo does not implement this ComfyUI node yet" in message


def test_prompt_no_outputs(executor, prompt):
    del prompt["9"]
    result = executor.validate(prompt)
    assert result.error == {
        "type": "prompt_no_outputs",
        "message": "Prompt has no outputs",
        "details": "",
        "extra_info": {},
    }


def test_partial_targets_select_outputs(executor, prompt):
    prompt["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["57:8", 0]}}
    assert executor.validate(prompt, ["10"]).outputs == ["10"]
    assert executor.validate(prompt, ["57:3"]).error["type"] == "prompt_no_outputs"


def test_required_input_missing(executor, prompt):
    del prompt["57:3"]["inputs"]["steps"]
    result = executor.validate(prompt)
    assert_failed_outputs(result)
    assert result.error["details"] == ""  # as in ComfyUI: only the output's own errors are listed here
    assert only_node_error(result, "57:3") == {
        "type": "required_input_missing",
        "message": "Required input is missing",
        "details": "steps",
        "extra_info": {"input_name": "steps"},
    }


def test_output_nodes_own_errors_are_listed_in_details(executor, prompt):
    del prompt["9"]["inputs"]["images"]
    result = executor.validate(prompt)
    assert_failed_outputs(result)
    assert result.error["details"] == "Required input is missing: images"
    assert result.error["extra_info"] == {}


def test_bad_linked_input(executor, prompt):
    prompt["57:8"]["inputs"]["vae"] = ["57:29", 0, 1]
    error = only_node_error(executor.validate(prompt), "57:8")
    assert error["type"] == "bad_linked_input"
    assert error["message"] == "Bad linked input, must be a length-2 list of [node_id, slot_index]"
    assert error["extra_info"]["input_name"] == "vae"
    assert error["extra_info"]["received_value"] == ["57:29", 0, 1]
    assert error["extra_info"]["input_config"] == [
        "VAE",
        {"tooltip": "The VAE model used for decoding the latent."},
    ]


def test_return_type_mismatch(executor, prompt):
    prompt["57:8"]["inputs"]["vae"] = ["57:28", 0]  # a MODEL into a VAE input
    error = only_node_error(executor.validate(prompt), "57:8")
    assert error["type"] == "return_type_mismatch"
    assert error["message"] == "Return type mismatch between linked nodes"
    assert error["details"] == "vae, received_type(MODEL) mismatch input_type(VAE)"
    assert error["extra_info"]["received_type"] == "MODEL"
    assert error["extra_info"]["linked_node"] == ["57:28", 0]


def test_invalid_input_type(executor, prompt):
    prompt["57:3"]["inputs"]["steps"] = "eight"
    error = only_node_error(executor.validate(prompt), "57:3")
    assert error["type"] == "invalid_input_type"
    assert error["message"] == "Failed to convert an input value to a INT value"
    assert error["details"].startswith("steps, eight, invalid literal")
    assert error["extra_info"]["received_value"] == "eight"
    assert "exception_message" in error["extra_info"]


def test_value_smaller_than_min(executor, prompt):
    prompt["57:3"]["inputs"]["steps"] = 0
    error = only_node_error(executor.validate(prompt), "57:3")
    assert error == {
        "type": "value_smaller_than_min",
        "message": "Value 0 smaller than min of 1",
        "details": "steps",
        "extra_info": {
            "input_name": "steps",
            "input_config": [
                "INT",
                {
                    "default": 20,
                    "min": 1,
                    "max": 10000,
                    "tooltip": "The number of steps used in the denoising process.",
                },
            ],
            "received_value": 0,
        },
    }


def test_value_bigger_than_max(executor, prompt):
    prompt["57:3"]["inputs"]["denoise"] = 1.5
    error = only_node_error(executor.validate(prompt), "57:3")
    assert error["type"] == "value_bigger_than_max"
    assert error["message"] == "Value 1.5 bigger than max of 1.0"
    assert error["details"] == "denoise"


def test_value_not_in_list(executor, prompt):
    prompt["57:28"]["inputs"]["unet_name"] = "missing_model.safetensors"
    error = only_node_error(executor.validate(prompt), "57:28")
    assert error["type"] == "value_not_in_list"
    assert error["message"] == "Value not in list"
    assert error["details"] == (
        "unet_name: 'missing_model.safetensors' not in ['z_image_bf16.safetensors', 'z_image_turbo_bf16.safetensors']"
    )
    assert error["extra_info"]["received_value"] == "missing_model.safetensors"


def test_value_not_in_list_hides_long_option_lists(executor, prompt):
    prompt["57:3"]["inputs"]["sampler_name"] = "nope"
    executor.context.engine.sampler_names = lambda: [f"s{i}" for i in range(30)]
    error = only_node_error(executor.validate(prompt), "57:3")
    assert error["details"] == "sampler_name: 'nope' not in (list of length 30)"
    assert error["extra_info"]["input_config"] is None


def test_custom_validation_failed(executor):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "ghost.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    result = executor.validate(prompt)
    assert_failed_outputs(result)
    assert result.node_errors["1"]["errors"] == [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "image - Invalid image file: ghost.png",
            "extra_info": {"input_name": "image"},
        }
    ]


def test_exception_during_validation_for_a_link_to_a_missing_node(executor, prompt):
    prompt["9"]["inputs"]["images"] = ["404", 0]
    result = executor.validate(prompt)
    assert_failed_outputs(result)
    error = only_node_error(result, "9")
    assert error["type"] == "exception_during_validation"
    assert error["message"] == "Exception when validating node"
    assert "'404'" in error["details"]
    assert set(error["extra_info"]) == {"exception_type", "traceback"}


def test_exception_during_inner_validation_names_the_upstream_node(executor, prompt):
    prompt["57:8"]["inputs"]["vae"] = ["404", 0]
    error = only_node_error(executor.validate(prompt), "57:8")
    assert error["type"] == "exception_during_inner_validation"
    assert error["message"] == "Exception when validating inner node"
    assert "'404'" in error["details"]
    # As in ComfyUI, the error is filed under the failing node but names the downstream input.
    assert error["extra_info"]["input_name"] == "images"
    assert error["extra_info"]["linked_node"] == ["57:8", 0]


def test_upstream_errors_are_reported_once_and_downstream_nodes_stay_clean(executor, prompt):
    prompt["57:13"]["inputs"]["width"] = 8  # below min 16
    result = executor.validate(prompt)
    assert list(result.node_errors) == ["57:13"]


def test_one_failing_output_leaves_the_other_valid(executor, prompt):
    prompt["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["57:8", 0]}}
    prompt["11"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}
    result = executor.validate(prompt)
    assert result.ok and sorted(result.outputs) == ["10", "9"]
    assert result.node_errors["11"]["errors"][0]["type"] == "required_input_missing"


def test_validation_does_not_modify_the_prompt(executor, prompt):
    prompt["57:3"]["inputs"]["steps"] = "8"
    before = copy.deepcopy(prompt)
    assert executor.validate(prompt).ok
    assert prompt == before


def test_notes_in_an_api_prompt_are_ignored(executor, prompt):
    prompt["99"] = {"class_type": "Note", "inputs": {}}
    prompt["98"] = {"class_type": "MarkdownNote", "inputs": {"text": "hi"}}
    assert executor.validate(prompt).ok
