"""ComfyUI's int8 (+ convrot), nvfp4, mxfp8 and mixed files through the normal loaders.

Files are written from the format definitions (`synthetic_quant.comfy_quant_file_from`, GGUF_TINY so
every matrix has 256-wide groups, as the published convrot files use); their "dequantized twins" hold each
layer expanded by the numpy references (`dequantized_comfy_quant`) as fp32 safetensors.

Tolerances (fp32 on CPU): none. Every quantized weight zturbo expands equals the twin's (bit-exact: same
float32 operations, or for convrot the same correctly rounded value; tests/quant/test_quant_formats.py
derives both), and a quantized Linear computes `F.linear(x, expanded W)` like `nn.Linear`, so a whole
image (latents and pixels) generated from a quantized file equals the image from its twin bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.inventory import describe_models
from zturbo.checkpoints.layout import COMFY_FILES, ModelPaths, tokenizer_dir
from zturbo.checkpoints.load import load_dit, load_text_encoder
from zturbo.engine import Engine
from zturbo.generate import run_request
from zturbo.quant.int8 import Int8Weight
from zturbo.quant.linear import QuantLinear
from zturbo.quant.mxfp8 import MXFP8Weight
from zturbo.quant.nvfp4 import NVFP4Weight
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.runtime.sizes import measure
from zturbo.testing.synthetic import write_comfy_models
from zturbo.testing.synthetic_quant import GGUF_TINY, comfy_quant_file_from, dequantized_comfy_quant

REQUEST = GenerationRequest("a red fox, 狐狸", width=64, height=48, steps=2, sampler="euler", seed=7)
FORMATS = ("int8_tensorwise", "int8_convrot", "nvfp4", "nvfp4_prescaled", "mxfp8", "mixed")
TYPES = {"int8_tensorwise": Int8Weight, "int8_convrot": Int8Weight, "nvfp4": NVFP4Weight}
TYPES |= {"nvfp4_prescaled": NVFP4Weight, "mxfp8": MXFP8Weight}


def te_linear(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and ".layers." in f".{name}" and "embed" not in name


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("comfy_quant_models")
    write_comfy_models(root, GGUF_TINY, dtype=torch.bfloat16, dit_prefix="model.diffusion_model.")
    for fmt in FORMATS:
        path = comfy_quant_file_from(root / COMFY_FILES[DIT], root / f"dit-{fmt}.safetensors", fmt)
        dequantized_comfy_quant(path, root / f"dit-{fmt}-twin.safetensors")
    te = comfy_quant_file_from(
        root / COMFY_FILES[TEXT_ENCODER], root / "te-mixed.safetensors", "mixed", quantize=te_linear
    )
    dequantized_comfy_quant(te, root / "te-mixed-twin.safetensors")
    return root


def generate(dit: Path, te: Path, vae: Path):
    engine = Engine(EngineSettings("cpu", "fp32", speed="reference"))
    return run_request(engine, ModelPaths(dit, te, vae, tokenizer_dir(None)), REQUEST)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_weight_equals_its_reference_expansion(models: Path, fmt: str) -> None:
    quantized = load_dit(models / f"dit-{fmt}.safetensors", dtype=torch.float32).module
    expected = load_dit(models / f"dit-{fmt}-twin.safetensors", dtype=torch.float32).module.state_dict()
    kinds = set()
    for name, module in quantized.named_modules():
        if isinstance(module, QuantLinear):
            weight = module.quantized()
            kinds.add(type(weight))
            if fmt in TYPES:
                assert type(weight) is TYPES[fmt], name
            if fmt == "int8_convrot":
                assert weight.convrot_groupsize == 256, name
            assert torch.equal(module.weight, expected[f"{name}.weight"]), name
    assert all(torch.equal(v, expected[k]) for k, v in quantized.state_dict().items())
    assert type(quantized.noise_refiner[0].attention.to_q) is torch.nn.Linear  # not quantized in the file
    if fmt == "mixed":  # the cycle reaches every format, and leaves some main-block layers in bf16
        assert {k.__name__ for k in kinds} == {"Int8Weight", "NVFP4Weight", "MXFP8Weight", "Fp8Weight"}
        plain = [
            m for n, m in quantized.named_modules() if n.startswith("layers.") and type(m) is torch.nn.Linear
        ]
        assert plain


@pytest.mark.parametrize("fmt", ["int8_convrot", "nvfp4_prescaled", "mxfp8", "mixed"])
def test_image_equals_its_dequantized_twin(models: Path, fmt: str) -> None:
    vae = models / COMFY_FILES[VAE]
    te, te_twin = models / COMFY_FILES[TEXT_ENCODER], models / COMFY_FILES[TEXT_ENCODER]
    if fmt == "mixed":
        te, te_twin = models / "te-mixed.safetensors", models / "te-mixed-twin.safetensors"
    ours = generate(models / f"dit-{fmt}.safetensors", te, vae)
    twin = generate(models / f"dit-{fmt}-twin.safetensors", te_twin, vae)
    assert torch.equal(ours.latents, twin.latents) and torch.equal(ours.images, twin.images)
    assert ours.images.std() > 0.01


def test_mixed_text_encoder_equals_its_twin(models: Path) -> None:
    a = load_text_encoder(models / "te-mixed.safetensors", dtype=torch.float32).module
    b = load_text_encoder(models / "te-mixed-twin.safetensors", dtype=torch.float32).module
    assert isinstance(a.layers[0].self_attn.q_proj, QuantLinear)
    ids = torch.tensor([[151644, 872, 198, 64, 151645]])
    assert torch.equal(a(ids).last_hidden_state, b(ids).last_hidden_state)


@pytest.mark.parametrize("fmt", ["int8_convrot", "nvfp4_prescaled", "mxfp8", "mixed"])
def test_the_planner_counts_the_bytes_zturbo_holds(models: Path, fmt: str) -> None:
    """Per streamed block, `measure` (headers only) equals the loaded block's parameters and buffers."""
    path = models / f"dit-{fmt}.safetensors"
    size = measure(path, DIT, dtype=torch.float32)
    module = load_dit(path, dtype=torch.float32).module
    blocks = [*module.noise_refiner, *module.context_refiner, *module.layers]
    held = [sum(t.numel() * t.element_size() for t in [*b.parameters(), *b.buffers()]) for b in blocks]
    assert list(size.blocks) == held
    layer = module.layers[0]
    fused = sum(math.prod(m.weight_shape) for m in (layer.feed_forward.w1, layer.feed_forward.w3))
    assert size.quantized and size.largest_quantized == fused  # W1‖W3, in weight elements (not bytes)


def test_zturbo_models_names_the_storage(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / COMFY_FILES[DIT].split("/")[0]
    folder.mkdir()
    for fmt in ("int8_convrot", "nvfp4", "mixed"):
        (folder / f"dit-{fmt}.safetensors").symlink_to(models / f"dit-{fmt}.safetensors")
    lines = "\n".join(describe_models(tmp_path))
    assert "dit-int8_convrot.safetensors: Z-Image DiT (int8, ComfyUI/original layout)" in lines
    assert "dit-nvfp4.safetensors: Z-Image DiT (nvfp4, ComfyUI/original layout)" in lines
    assert "dit-mixed.safetensors: Z-Image DiT (int8 + nvfp4 + mxfp8 + fp8 scaled, ComfyUI/original" in lines
