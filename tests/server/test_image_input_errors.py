"""Bad image inputs queued with POST /prompt on the real engine (tiny random-weight models): a file that
is not an image, an inpaint mask of another size, a ControlNet file for another model family. Each job
ends with one line naming the input and what was expected (no traceback text), and the server then runs
a good prompt normally. One server (one model load) for all of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from server.conftest import LiveServer, queue_prompt, run_live
from server.test_graph_integration import z_image_prompt
from zturbo.runtime.settings import EngineSettings
from zturbo.server import ServerConfig, create_app
from zturbo.testing.controlnet_files import CONTROL_MODELS, FILE_NAMES, write_controlnet
from zturbo.testing.synthetic import write_comfy_models

# SDXL ControlNets as people drop them into model_patches: ComfyUI's original key names (a few of them,
# tiny) and diffusers' (xinsir's / diffusers' controlnet-*-sdxl-1.0 files).
SDXL_CONTROLNETS = {
    "controlnet-union-sdxl-1.0.safetensors": {
        "input_hint_block.0.weight": (16, 3, 3, 3),
        "input_hint_block.0.bias": (16,),
        "zero_convs.0.0.weight": (8, 8, 1, 1),
        "label_emb.0.0.weight": (8, 16),
    },
    "diffusion_pytorch_model.safetensors": {
        "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
        "controlnet_down_blocks.0.weight": (8, 8, 1, 1),
        "add_embedding.linear_1.weight": (8, 16),
        "conv_in.weight": (8, 4, 3, 3),
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[LiveServer, Path]]:
    root = tmp_path_factory.mktemp("image_input_errors")
    models = root / "models"
    write_comfy_models(models, CONTROL_MODELS, dtype=torch.bfloat16)
    write_controlnet(models / "model_patches" / FILE_NAMES["1.0"], "1.0", dtype=torch.bfloat16)
    for name, shapes in SDXL_CONTROLNETS.items():
        state = {key: torch.zeros(shape) for key, shape in shapes.items()}
        save_file(state, str(models / "model_patches" / name))
    config = ServerConfig(
        models_dir=models,
        output_dir=root / "output",
        input_dir=root / "input",
        temp_dir=root / "temp",
        user_dir=root / "user",
        engine=EngineSettings("cpu", vram="auto"),
    )
    config.input_dir.mkdir(parents=True, exist_ok=True)
    photo = np.zeros((48, 64, 3), np.uint8)
    photo[:, 32:] = (200, 120, 40)
    Image.fromarray(photo).save(config.input_dir / "photo.png")
    for live in run_live(create_app(config)):
        yield live, config.input_dir


def run_prompt(live: LiveServer, prompt: dict, timeout: float = 120) -> dict:
    """Queue `prompt` and return its /history entry once it has finished."""
    return queue_prompt(live.http, prompt, timeout=timeout)


def execution_error(entry: dict) -> dict:
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert entry["status"]["status_str"] == "error" and errors, entry["status"]
    return errors[0]


def one_clear_line(message: str, *parts: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message and 'File "' not in message, message
    for part in parts:
        assert part in message, (part, message)


def saved(entry: dict) -> list[str]:
    assert entry["status"]["status_str"] == "success", entry["status"]
    return [i["filename"] for out in entry["outputs"].values() for i in out.get("images", [])]


def small(prompt: dict, steps: int = 1) -> dict:
    """The Z-Image graph at 64×48 and one step (the CPU run stays short)."""
    prompt["7"]["inputs"].update(width=64, height=48)
    prompt["8"]["inputs"]["steps"] = steps
    return prompt


def refused(live: LiveServer, prompt: dict) -> dict[str, dict]:
    """POST /prompt answers 400 with ComfyUI's node_errors; nothing is queued."""
    response = httpx.post(f"{live.http}/prompt", json={"prompt": prompt}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "prompt_outputs_failed_validation"
    return response.json()["node_errors"]


def test_an_input_that_is_not_an_image(server) -> None:
    """Refused from the file's header when the prompt is submitted, before any model loads."""
    live, input_dir = server
    (input_dir / "notes.png").write_text("just text, not a picture", encoding="utf-8")
    prompt: dict[str, dict] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "notes.png"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "notes.png", "channel": "alpha"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    errors = refused(live, prompt)
    assert {node: e["class_type"] for node, e in errors.items()} == {"1": "LoadImage", "2": "LoadImageMask"}
    for node_errors in errors.values():
        (error,) = node_errors["errors"]
        assert error["extra_info"]["input_name"] == "image"
        one_clear_line(error["details"], "notes.png", "not an image", "expected a PNG")
    prompt["1"]["inputs"]["image"] = prompt["2"]["inputs"]["image"] = "photo.png"
    assert len(saved(run_prompt(live, prompt))) == 2


def inpaint_prompt(mask_name: str) -> dict:
    """Photo → VAEEncode → SetLatentNoiseMask(LoadImageMask) → KSampler → VAEDecode →
    ImageCompositeMasked over the photo through the mask → SaveImage."""
    prompt = small(z_image_prompt())
    prompt.update(
        {
            "20": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
            "21": {"class_type": "LoadImageMask", "inputs": {"image": mask_name, "channel": "red"}},
            "22": {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["3", 0]}},
            "23": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["22", 0], "mask": ["21", 0]}},
            "24": {
                "class_type": "ImageCompositeMasked",
                "inputs": {
                    "destination": ["20", 0],
                    "source": ["9", 0],
                    "x": 0,
                    "y": 0,
                    "resize_source": False,
                    "mask": ["21", 0],
                },
            },  # fmt: skip
        }
    )
    prompt["8"]["inputs"].update(latent_image=["23", 0], denoise=0.6)
    prompt["10"]["inputs"]["images"] = ["24", 0]
    return prompt


def mask_graphs(mask_name: str) -> dict[str, dict]:
    """The three places a mask meets its image: the sampler (SetLatentNoiseMask's latent), and
    InpaintModelConditioning and ImageCompositeMasked, each in a graph of its own."""
    conditioning = small(z_image_prompt())
    conditioning.update(
        {
            "20": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
            "21": {"class_type": "LoadImageMask", "inputs": {"image": mask_name, "channel": "red"}},
            "22": {
                "class_type": "InpaintModelConditioning",
                "inputs": {
                    "positive": ["5", 0],
                    "negative": ["6", 0],
                    "vae": ["3", 0],
                    "pixels": ["20", 0],
                    "mask": ["21", 0],
                    "noise_mask": True,
                },
            },  # fmt: skip
        }
    )
    conditioning["8"]["inputs"].update(
        positive=["22", 0], negative=["22", 1], latent_image=["22", 2], denoise=0.6
    )
    composite = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": mask_name, "channel": "red"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {
            "class_type": "ImageCompositeMasked",
            "inputs": {
                "destination": ["1", 0],
                "source": ["3", 0],
                "x": 0,
                "y": 0,
                "resize_source": False,
                "mask": ["2", 0],
            },
        },  # fmt: skip
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    return {
        "KSampler": inpaint_prompt(mask_name),
        "InpaintModelConditioning": conditioning,
        "ImageCompositeMasked": composite,
    }


def test_a_mask_of_another_shape(server) -> None:
    """ComfyUI resizes masks to their images, so a half-size mask works; one of another shape would be
    stretched over the picture: refused where the mask meets its image, naming both sizes."""
    live, input_dir = server
    Image.new("L", (32, 16), 255).save(input_dir / "wide-mask.png")
    for node, prompt in mask_graphs("wide-mask.png").items():
        error = execution_error(run_prompt(live, prompt))
        assert error["node_type"] == node, (node, error)
        one_clear_line(error["exception_message"], "mask", "32×16", "64×48", "another shape")
    Image.new("L", (32, 24), 255).save(input_dir / "half-mask.png")  # the image's shape, half its size
    for node, prompt in mask_graphs("half-mask.png").items():
        assert saved(run_prompt(live, prompt)), node


def controlnet_prompt(patch: str) -> dict:
    prompt = small(z_image_prompt())
    prompt.update(
        {
            "20": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
            "21": {"class_type": "ModelPatchLoader", "inputs": {"name": patch}},
            "22": {
                "class_type": "ZImageFunControlnet",
                "inputs": {
                    "model": ["4", 0],
                    "model_patch": ["21", 0],
                    "vae": ["3", 0],
                    "strength": 1.0,
                    "image": ["20", 0],
                },
            },  # fmt: skip
        }
    )
    prompt["8"]["inputs"]["model"] = ["22", 0]
    return prompt


@pytest.mark.parametrize("name", SDXL_CONTROLNETS)
def test_a_controlnet_for_another_model(server, name: str) -> None:
    live, _ = server
    error = execution_error(run_prompt(live, controlnet_prompt(name)))
    assert error["node_type"] == "ModelPatchLoader" and error["node_id"] == "21"
    one_clear_line(error["exception_message"], name, "SD1.5/SDXL", "not a Z-Image Fun ControlNet")


def test_the_server_then_runs_the_z_image_controlnet(server) -> None:
    assert saved(run_prompt(server[0], controlnet_prompt(FILE_NAMES["1.0"])))
