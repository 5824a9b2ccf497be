"""The official ControlNet template (`image_z_image_turbo_fun_union_controlnet.json`) runs unmodified
through `zturbo run` on tiny random-weight files named like the real ones (the 30-layer tiny DiT, so
the released ControlNet 1.0 layout applies), and gives the pixels the engine gives for the same steps
(Canny 0.1/0.32 → QwenImageDiffsynthControlnet strength 1 → KSampler). Bad inputs fail clearly.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zturbo.checkpoints.layout import resolve_models
from zturbo.cli import app
from zturbo.engine import Engine
from zturbo.errors import InputError, ModelFileError
from zturbo.nodes.io import read_image
from zturbo.output.png import to_pil
from zturbo.preprocess import canny_image
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.controlnet_files import CONTROL_MODELS, FILE_NAMES, write_controlnet
from zturbo.testing.synthetic import TINY_DIT, build_random_dit, write_comfy_models

runner = CliRunner()
TEMPLATE = "image_z_image_turbo_fun_union_controlnet.json"
INPUT = "image_z_image_turbo_fun_union_controlnet_input_image.png"


def template_path() -> Path:
    spec = importlib.util.find_spec("comfyui_workflow_templates_json")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui-workflow-templates-json is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations))) / "templates" / TEMPLATE


def write_input_image(path: Path, width: int = 64, height: int = 48) -> Path:
    """A picture with edges: a bright disc and a bar on a gradient."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx / width, yy / height, np.full_like(xx, 0.3, dtype=float)], -1)
    image[(xx - 20) ** 2 + (yy - 24) ** 2 < 100] = 1.0
    image[10:16, 36:60] = 0.05
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def control_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cn_models")
    write_comfy_models(root, CONTROL_MODELS, dtype=torch.bfloat16)
    write_controlnet(root / "model_patches" / FILE_NAMES["1.0"], "1.0", dtype=torch.bfloat16)
    return root


@pytest.fixture(scope="module")
def template_run(control_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cn_run")
    write_input_image(out / "in" / INPUT)
    result = runner.invoke(
        app,
        ["run", str(template_path()), "--models-dir", str(control_models), "--out", str(out),
         "--input-dir", str(out / "in"), "--device", "cpu"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (path,) = [Path(line) for line in result.stdout.split() if line.endswith(".png")]
    return path, out / "in" / INPUT


def test_template_runs_and_equals_the_engine(template_run, control_models):
    path, input_image = template_run
    with Image.open(path) as img:
        assert img.size == (64, 48)
        prompt = json.loads(img.info["prompt"])
        ran = np.asarray(img)
    types = {n["class_type"] for n in prompt.values()}
    assert {"ModelPatchLoader", "QwenImageDiffsynthControlnet", "Canny", "KSampler"} <= types
    ks = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler")
    text = next(n["inputs"]["text"] for n in prompt.values() if n["class_type"] == "CLIPTextEncode")

    engine = Engine(EngineSettings("cpu"))
    model, clip, vae = engine.load_all(resolve_models(control_models))
    patch = engine.load_controlnet(control_models / "model_patches" / FILE_NAMES["1.0"])
    image, _ = read_image(input_image)
    model = engine.apply_controlnet(
        engine.with_shift(model, 3.0), patch, vae, 1.0, canny_image(image, 0.1, 0.32)
    )
    positive = engine.encode_text(clip, text)
    latents = engine.sample(
        model, positive, engine.zero_conditioning(positive), torch.zeros(1, 16, 6, 8), seed=ks["seed"],
        steps=ks["steps"], cfg=ks["cfg"], sampler_name=ks["sampler_name"], scheduler=ks["scheduler"],
    )  # fmt: skip
    ours = np.asarray(to_pil(engine.decode(vae, latents)[0]))
    assert np.array_equal(ours, ran)
    plain = engine.sample(
        engine.with_shift(engine.load_all(resolve_models(control_models))[0], 3.0), positive, None,
        torch.zeros(1, 16, 6, 8), seed=ks["seed"], steps=ks["steps"], cfg=1.0,
        sampler_name=ks["sampler_name"], scheduler=ks["scheduler"],
    )  # fmt: skip
    assert not torch.equal(plain, latents)  # the ControlNet took part


def test_controlnet_for_another_model_is_refused_naming_the_file(tmp_path, control_models):
    engine = Engine(EngineSettings("cpu"))
    flux = tmp_path / "flux-controlnet.safetensors"
    from safetensors.torch import save_file

    save_file(
        {"controlnet_x_embedder.weight": torch.zeros(4, 4), "controlnet_blocks.0.weight": torch.zeros(4, 4)},
        str(flux),
    )
    with pytest.raises(ModelFileError, match=r"flux-controlnet.safetensors.*Flux ControlNet"):
        engine.load_controlnet(flux)
    with pytest.raises(ModelFileError, match=r"z_image_turbo_bf16.*Z-Image DiT.*not a ControlNet"):
        engine.load_controlnet(control_models / "diffusion_models" / "z_image_turbo_bf16.safetensors")

    wide = write_controlnet(tmp_path / "wide.safetensors", "2.1 Lite", CONTROL_MODELS.dit.__class__(
        **{**CONTROL_MODELS.dit.kwargs(), "dim": 128, "n_heads": 2}))  # fmt: skip
    model, _, vae = engine.load_all(resolve_models(control_models))
    with pytest.raises(
        InputError, match=r"wide.safetensors is for a 128-wide.*z_image_turbo_bf16.safetensors is 64"
    ):
        engine.apply_controlnet(model, engine.load_controlnet(wide), vae, 1.0, torch.zeros(1, 48, 64, 3))
    v1 = engine.load_controlnet(control_models / "model_patches" / FILE_NAMES["1.0"])
    with pytest.raises(InputError, match="no inpaint mode"):
        engine.apply_controlnet(model, v1, vae, 1.0, torch.zeros(1, 48, 64, 3), torch.zeros(1, 48, 64, 3))
    with pytest.raises(InputError, match="needs a control image"):
        engine.apply_controlnet(model, v1, vae, 1.0)


def test_controlnet_on_a_two_layer_dit_is_refused(tmp_path):
    engine = Engine(EngineSettings("cpu"))
    root = tmp_path / "m"
    write_comfy_models(root)
    model, _, vae = engine.load_all(resolve_models(root))
    assert len(build_random_dit(TINY_DIT)[0].layers) == 2
    patch = engine.load_controlnet(write_controlnet(tmp_path / "cn.safetensors", "1.0", TINY_DIT))
    with pytest.raises(InputError, match="6 control blocks does not fit a 2-layer model"):
        engine.apply_controlnet(model, patch, vae, 1.0, torch.zeros(1, 32, 32, 3))


def test_cli_generate_with_control(control_models, tmp_path):
    """`zturbo generate --control`: the size comes from the control image; canny differs from tile."""
    image = write_input_image(tmp_path / "photo.png", 70, 50)  # → 64x48 (multiples of 16)
    paths = {}
    for kind in ("canny", "tile"):
        result = runner.invoke(
            app,
            ["generate", "a fox", "--seed", "3", "--steps", "2", "--models-dir", str(control_models),
             "--out", str(tmp_path / kind), "--device", "cpu", "--control", str(image),
             "--control-type", kind, "--control-strength", "0.8"],
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        (paths[kind],) = [Path(line) for line in result.stdout.split() if line.endswith(".png")]
    with Image.open(paths["canny"]) as a, Image.open(paths["tile"]) as b:
        assert a.size == (64, 48) and not np.array_equal(np.asarray(a), np.asarray(b))
    bad = runner.invoke(app, ["generate", "x", "--models-dir", str(control_models), "--control",
                              str(image), "--control-type", "normal", "--device", "cpu"])  # fmt: skip
    assert bad.exit_code != 0 and "--control-type must be one of canny" in str(bad.exception)


def test_controlnet_on_a_gguf_base(control_models, tmp_path):
    """A Q8_0 GGUF diffusion model with a ControlNet: the control acts on activations, so it equals the
    same ControlNet on the GGUF's own dequantized weights up to bf16 rounding of the expanded weights."""
    import shutil

    from gguf import GGMLQuantizationType

    from zturbo.testing.synthetic_quant import dequantized_gguf, gguf_dit_from

    def run(root: Path) -> torch.Tensor:
        engine = Engine(EngineSettings("cpu", "bf16"))
        model, clip, vae = engine.load_all(resolve_models(root))
        patch = engine.load_controlnet(control_models / "model_patches" / FILE_NAMES["1.0"])
        image = canny_image(torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0)), 0.1, 0.3)
        model = engine.apply_controlnet(model, patch, vae, 0.8, image)
        return engine.sample(
            model, engine.encode_text(clip, "a fox"), None, torch.zeros(1, 16, 6, 8), seed=5, steps=2,
            cfg=1.0, sampler_name="euler", scheduler="simple",
        )  # fmt: skip

    roots = {}
    for name in ("gguf", "plain"):
        roots[name] = tmp_path / name
        shutil.copytree(control_models, roots[name], ignore=shutil.ignore_patterns("diffusion_models"))
        (roots[name] / "diffusion_models").mkdir()
    dit = control_models / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    gguf = gguf_dit_from(
        dit, roots["gguf"] / "diffusion_models" / "z_image_turbo-Q8_0.gguf", GGMLQuantizationType.Q8_0
    )
    dequantized_gguf(gguf, roots["plain"] / "diffusion_models" / "z_image_turbo_bf16.safetensors")
    quantized, plain = run(roots["gguf"]), run(roots["plain"])
    assert torch.isfinite(quantized).all()
    assert float((quantized - plain).norm() / plain.norm()) <= 2e-2
