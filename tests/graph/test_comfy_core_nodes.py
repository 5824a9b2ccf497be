"""A core ComfyUI node zturbo lacks is called that, not a custom node to install (issue 12, defect 5)."""

from __future__ import annotations

from zturbo.graph.comfy_core_nodes import CORE_NODE_TYPES, missing_node_message


def test_core_nodes_are_not_called_custom():
    assert {
        "KSampler",
        "CheckpointLoaderSimple",
        "LatentUpscaleBy",
        "ControlNetApplyAdvanced",
    } <= CORE_NODE_TYPES
    message = missing_node_message("ImageSharpen", "Sharpen")
    assert message == "Node 'Sharpen' (ImageSharpen) is a ComfyUI core node that zturbo does not implement."
    assert (
        missing_node_message("Fancy", "Fancy")
        == "Node 'Fancy' not found. The custom node may not be installed."
    )


def test_validation_uses_it(executor):
    result = executor.validate({"1": {"class_type": "ImageSharpen", "inputs": {}}})
    assert (
        not result.ok and "is a ComfyUI core node that zturbo does not implement" in result.error["message"]
    )
