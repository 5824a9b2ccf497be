"""Image, latent, text and loader nodes against ComfyUI's behaviour (nodes.py, comfy_extras/*, ComfyUI-GGUF)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from zturbo.checkpoints.detect import detect
from zturbo.checkpoints.reader import open_checkpoint
from zturbo.engine import Engine
from zturbo.errors import InputError
from zturbo.nodes.image_tools import EmptyImage, ImageBatch, ImageCompare, ImageCrop, ImageInvert
from zturbo.nodes.latent_batch import LatentFromBatch, RepeatLatentBatch
from zturbo.nodes.loaders import (
    CheckpointLoaderSimple,
    CLIPLoaderGGUF,
    DualCLIPLoader,
    UnetLoaderGGUF,
    UnetLoaderGGUFAdvanced,
)
from zturbo.nodes.utility import ComfySwitchNode, PreviewAny, StringConcatenate, preview_text
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.synthetic import COMFY_FILES


def test_image_batch_pads_alpha_and_resizes_the_second():
    a, b = torch.rand(1, 8, 8, 3), torch.rand(2, 4, 6, 4)
    (out,) = ImageBatch().execute(None, a, b)
    assert out.shape == (3, 8, 8, 4)
    assert torch.equal(out[0, ..., :3], a[0]) and torch.all(out[0, ..., 3] == 1.0)


def test_image_crop_keeps_the_corner_inside():
    image = torch.arange(2 * 5 * 6 * 3, dtype=torch.float32).reshape(2, 5, 6, 3)
    (out,) = ImageCrop().execute(None, image, 4, 3, 1, 2)
    assert torch.equal(out, image[:, 2:5, 1:5])
    (edge,) = ImageCrop().execute(None, image, 10, 10, 99, 99)  # x, y clamp to the last pixel
    assert edge.shape == (2, 1, 1, 3)


def test_invert_and_empty_image():
    image = torch.rand(1, 2, 2, 3)
    assert torch.equal(ImageInvert().execute(None, image)[0], 1.0 - image)
    (solid,) = EmptyImage().execute(None, 4, 3, 2, 0xFF8000)
    assert solid.shape == (2, 3, 4, 3)
    assert solid[0, 0, 0].tolist() == pytest.approx([1.0, 128 / 255, 0.0])


def test_latent_from_batch_and_repeat_keep_batch_index():
    latent = {"samples": torch.arange(4.0).view(4, 1, 1, 1)}
    (picked,) = LatentFromBatch().execute(None, latent, -2, 5)
    assert picked["samples"].flatten().tolist() == [2.0, 3.0] and picked["batch_index"] == [2, 3]
    (again,) = LatentFromBatch().execute(None, picked, 1, 1)
    assert again["batch_index"] == [3]
    (repeated,) = RepeatLatentBatch().execute(None, picked, 3)
    assert repeated["samples"].flatten().tolist() == [2.0, 3.0] * 3
    assert repeated["batch_index"] == [2, 3, 4, 5, 6, 7]
    masked = {"samples": torch.zeros(3, 1, 1, 1), "noise_mask": torch.arange(3.0).view(3, 1, 1, 1)}
    (one,) = LatentFromBatch().execute(None, masked, 1, 1)
    assert one["noise_mask"].flatten().tolist() == [1.0]
    assert RepeatLatentBatch().execute(None, masked, 2)[0]["noise_mask"].shape[0] == 6
    assert "batch_index" not in RepeatLatentBatch().execute(None, {"samples": torch.zeros(1, 1, 1, 1)}, 2)[0]


def test_text_nodes():
    assert StringConcatenate().execute(None, "a", "b", ", ") == ("a, b",)
    assert preview_text("x") == "x" and preview_text(3) == "3" and preview_text(True) == "True"
    assert preview_text(None) == "None" and preview_text({"a": [1]}) == '{\n    "a": [\n        1\n    ]\n}'
    assert "tensor(" in preview_text(torch.zeros(20))
    out = PreviewAny().execute(None, 1.5)
    assert out.values == ("1.5",) and out.ui == {"text": ["1.5"]}


def test_switch_asks_only_for_the_chosen_branch():
    assert ComfySwitchNode.check_lazy_status(True) == ["on_true"]
    assert ComfySwitchNode.check_lazy_status(False) == ["on_false"]
    assert ComfySwitchNode.check_lazy_status(True, on_true="t") == []
    assert ComfySwitchNode().execute(None, False, on_true="t", on_false="f") == ("f",)


def test_image_compare_saves_both_as_temp_previews(node_ctx):
    out = ImageCompare().execute(node_ctx, torch.rand(1, 8, 8, 3), torch.rand(2, 8, 8, 3))
    assert out.values == () and len(out.ui["a_images"]) == 1 and len(out.ui["b_images"]) == 2
    entry = out.ui["b_images"][0]
    assert entry["type"] == "temp" and entry["filename"].startswith("comfy.compare.b_temp_")
    assert (node_ctx.temp_dir / entry["filename"]).is_file()
    assert ImageCompare().execute(node_ctx).ui == {"a_images": [], "b_images": []}


class RecordingEngine:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def load_dit(self, path, weight_dtype):
        self.calls.append(("dit", path.name, weight_dtype))
        return "model"

    def load_text_encoder(self, path, device):
        self.calls.append(("te", path.name, device))
        return "clip"


def test_gguf_loaders_use_the_core_loaders(node_ctx, context):
    for folder, name in [
        ("diffusion_models", "z.gguf"),
        ("unet", "y.safetensors"),
        ("text_encoders", "q.gguf"),
    ]:
        (context.models_dir / folder).mkdir(exist_ok=True)
        (context.models_dir / folder / name).write_bytes(b"")
    options = UnetLoaderGGUF.schema.get_input("unet_name").option_values(context)
    assert options == ["z.gguf"]  # ComfyUI-GGUF's unet_gguf folder lists only .gguf files
    assert CLIPLoaderGGUF.schema.get_input("clip_name").option_values(context) == ["q.gguf"]
    context.engine = engine = RecordingEngine()
    assert UnetLoaderGGUF().execute(node_ctx, "z.gguf") == ("model",)
    args = dict(dequant_dtype="float16", patch_dtype="target", patch_on_device=True)
    UnetLoaderGGUFAdvanced().execute(node_ctx, "z.gguf", **args)
    CLIPLoaderGGUF().execute(node_ctx, "q.gguf", "lumina2")
    assert engine.calls == [
        ("dit", "z.gguf", "default"),
        ("dit", "z.gguf", "default"),
        ("te", "q.gguf", "default"),
    ]


def test_dual_clip_loader_takes_the_qwen3_encoder(node_ctx, context, tiny_models):
    folder = context.models_dir / "text_encoders"
    folder.mkdir()
    (folder / "qwen.safetensors").symlink_to(tiny_models / COMFY_FILES["text_encoder"])
    (folder / "vae.safetensors").symlink_to(tiny_models / COMFY_FILES["vae"])
    context.engine = engine = RecordingEngine()
    assert DualCLIPLoader().execute(node_ctx, "vae.safetensors", "qwen.safetensors", "sd3", "cpu") == (
        "clip",
    )
    assert engine.calls == [("te", "qwen.safetensors", "cpu")]
    with pytest.raises(InputError, match="neither is"):
        DualCLIPLoader().execute(node_ctx, "vae.safetensors", "vae.safetensors", "sd3")


def test_checkpoint_loader_reads_the_three_parts_of_one_file(node_ctx, context, tiny_models_fp32):
    parts = {
        "": load_file(str(tiny_models_fp32 / COMFY_FILES["dit"])),  # already model.diffusion_model.
        "text_encoders.qwen3_4b.transformer.": load_file(str(tiny_models_fp32 / COMFY_FILES["text_encoder"])),
        "vae.": load_file(str(tiny_models_fp32 / COMFY_FILES["vae"])),
    }
    bundle = context.models_dir / "checkpoints" / "z_image_turbo_aio.safetensors"
    bundle.parent.mkdir()
    save_file({prefix + k: v for prefix, sd in parts.items() for k, v in sd.items()}, str(bundle))
    assert detect(open_checkpoint(bundle)).layout == "checkpoint"
    context.engine = Engine(EngineSettings("cpu", "fp32"))
    model, clip, vae = CheckpointLoaderSimple().execute(node_ctx, "z_image_turbo_aio.safetensors")
    separate = Engine(EngineSettings("cpu", "fp32"))
    for ours, theirs in [
        (model.transformer, separate.load_dit(tiny_models_fp32 / COMFY_FILES["dit"]).transformer),
        (
            clip.component.module,
            separate.load_text_encoder(tiny_models_fp32 / COMFY_FILES["text_encoder"]).component.module,
        ),
        (vae.module, separate.load_vae(tiny_models_fp32 / COMFY_FILES["vae"]).module),
    ]:
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
