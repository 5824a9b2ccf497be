"""`/object_info` entries: the shape of every node and the specs the frontend depends on."""

from __future__ import annotations

import json

import pytest

from zturbo.nodes.base import Node
from zturbo.nodes.registry import NodeRegistry, default_registry
from zturbo.nodes.schema import Int, NodeSchema, Output

REQUIRED_NODES = {
    "CLIPLoader",
    "UNETLoader",
    "VAELoader",
    "CLIPTextEncode",
    "ConditioningZeroOut",
    "EmptySD3LatentImage",
    "EmptyLatentImage",
    "ModelSamplingAuraFlow",
    "KSampler",
    "KSamplerAdvanced",
    "VAEDecode",
    "VAEEncode",
    "SaveImage",
    "SaveImageAdvanced",
    "PreviewImage",
    "LoadImage",
    "ImageScaleBy",
    "ImageScaleToTotalPixels",
    "ImageScaleToMaxDimension",
    "ResolutionSelector",
    "GetImageSize",
    "LatentUpscaleBy",
}
INFO_KEYS = {
    "input",
    "input_order",
    "is_input_list",
    "output",
    "output_is_list",
    "output_name",
    "name",
    "display_name",
    "description",
    "python_module",
    "category",
    "output_node",
    "deprecated",
    "experimental",
}


@pytest.fixture(scope="module")
def info():
    return json.loads(json.dumps(default_registry().object_info()))  # exactly what the server sends


def test_every_template_node_is_registered(info):
    assert set(info) >= REQUIRED_NODES


def test_shape_of_every_node(info):
    for name, entry in info.items():
        assert INFO_KEYS <= set(entry) <= INFO_KEYS | {"output_tooltips"}, name
        assert entry["name"] == name and entry["display_name"]
        assert set(entry["input"]) <= {"required", "optional", "hidden"} and "required" in entry["input"]
        assert entry["input_order"] == {section: list(specs) for section, specs in entry["input"].items()}
        n = len(entry["output"])
        assert len(entry["output_is_list"]) == len(entry["output_name"]) == n
        for section in ("required", "optional"):
            for spec in entry["input"].get(section, {}).values():
                assert isinstance(spec, list) and 1 <= len(spec) <= 2
                assert isinstance(spec[0], (str, list))
                assert len(spec) == 1 or isinstance(spec[1], dict)


def test_ksampler_spec_matches_comfyui(info):
    ks = info["KSampler"]
    assert ks["input_order"] == {
        "required": [
            "model",
            "seed",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "positive",
            "negative",
            "latent_image",
            "denoise",
        ]
    }
    req = ks["input"]["required"]
    assert req["model"] == ["MODEL", {"tooltip": "The model used for denoising the input latent."}]
    seed = req["seed"][1]
    assert (seed["default"], seed["min"], seed["max"], seed["control_after_generate"]) == (
        0,
        0,
        18446744073709551615,
        True,
    )
    assert {k: req["steps"][1][k] for k in ("default", "min", "max")} == {
        "default": 20,
        "min": 1,
        "max": 10000,
    }
    assert {k: req["cfg"][1][k] for k in ("default", "min", "max", "step", "round")} == {
        "default": 8.0,
        "min": 0.0,
        "max": 100.0,
        "step": 0.1,
        "round": 0.01,
    }
    assert "res_multistep" in req["sampler_name"][0] and "euler" in req["sampler_name"][0]
    assert req["scheduler"][0][:2] == ["simple", "sgm_uniform"]
    assert {k: req["denoise"][1][k] for k in ("default", "min", "max", "step")} == {
        "default": 1.0,
        "min": 0.0,
        "max": 1.0,
        "step": 0.01,
    }
    assert ks["output"] == ["LATENT"] and ks["category"] == "model/sampling" and ks["output_node"] is False


def test_loader_specs_match_comfyui(info):
    unet = info["UNETLoader"]
    assert unet["display_name"] == "Load Diffusion Model" and unet["category"] == "model/loaders"
    assert unet["input"]["required"]["weight_dtype"] == [
        ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],
        {"advanced": True},
    ]
    assert unet["input"]["required"]["unet_name"] == [[]]  # no context: no files
    clip = info["CLIPLoader"]
    assert clip["input_order"] == {"required": ["clip_name", "type"], "optional": ["device"]}
    assert "lumina2" in clip["input"]["required"]["type"][0]
    assert clip["input"]["optional"]["device"] == [["default", "cpu"], {"advanced": True}]
    assert clip["output"] == ["CLIP"] and info["VAELoader"]["output"] == ["VAE"]


def test_empty_sd3_latent_is_a_v3_spec(info):
    entry = info["EmptySD3LatentImage"]
    assert entry["input"] == {
        "required": {
            "width": ["INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}],
            "height": ["INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
        }
    }
    assert entry["category"] == "model/latent/stable diffusion" and entry["output"] == ["LATENT"]


def test_hidden_inputs_and_output_nodes(info):
    assert info["SaveImage"]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["SaveImage"]["input_order"]["hidden"] == ["prompt", "extra_pnginfo"]
    assert info["SaveImage"]["output_node"] and info["PreviewImage"]["output_node"]
    assert info["SaveImageAdvanced"]["input"]["hidden"] == {
        "prompt": ["PROMPT"],
        "extra_pnginfo": ["EXTRA_PNGINFO"],
    }
    assert info["LoadImage"]["input"]["required"]["image"][1] == {"image_upload": True}
    assert info["ResolutionSelector"]["output_name"] == ["width", "height"]


def test_option_lists_are_computed_from_the_context(context):
    (context.models_dir / "diffusion_models" / "sub").mkdir(parents=True)
    (context.models_dir / "diffusion_models" / "sub" / "b.gguf").write_bytes(b"")
    (context.models_dir / "unet").mkdir()
    (context.models_dir / "unet" / "a.safetensors").write_bytes(b"")
    (context.models_dir / "unet" / "notes.txt").write_text("x")
    (context.input_dir / "cat.png").write_bytes(b"")
    registry = default_registry(context)
    assert registry.object_info_for("UNETLoader")["input"]["required"]["unet_name"] == [
        ["a.safetensors", "sub/b.gguf"]
    ]
    assert registry.object_info()["LoadImage"]["input"]["required"]["image"][0] == ["cat.png"]


def test_registry_basics():
    registry = NodeRegistry()

    class Custom(Node):
        schema = NodeSchema(name="Custom", inputs=(Int("n", default=1),), outputs=(Output("INT"),))

        def execute(self, ctx, n):
            return (n,)

    registry.register(Custom)
    assert registry.get("Custom") is Custom and registry.get("Nope") is None
    assert registry.object_info_for("Custom")["input"]["required"]["n"] == ["INT", {"default": 1}]
    with pytest.raises(KeyError):
        registry.object_info_for("Nope")
    with pytest.raises(TypeError):
        registry.register(object)

    class Other(Custom):
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Other)


def test_model_listing_survives_symlink_loops(context):
    vae = context.models_dir / "vae"
    (vae / "inner").mkdir(parents=True)
    (vae / "inner" / "ae.safetensors").write_bytes(b"")
    (vae / "inner" / "loop").symlink_to(vae)
    assert context.list_models("vae") == ["inner/ae.safetensors"]
    assert context.resolve_model("vae", "inner/ae.safetensors") == vae / "inner" / "ae.safetensors"
