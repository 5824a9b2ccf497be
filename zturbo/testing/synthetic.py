"""Random-weight Z-Image models written in the real file layouts.

No weights can be downloaded in tests or on the benchmark machine, so we write our own: tiny ones for
the tests, full-size ones for GPU benchmarks, through the same code and in the same layouts users have
(ComfyUI single files, a diffusers folder). Values are scaled like a trained network's (unit-ish
activations), so outputs are neither zero nor NaN.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from zturbo.checkpoints import keymaps
from zturbo.checkpoints.assign import build_empty
from zturbo.checkpoints.layout import COMFY_FILES, tokenizer_dir
from zturbo.models.configs import DiTConfig, TextEncoderConfig, VAEConfig

TINY_DIT = DiTConfig(
    dim=64, n_layers=2, n_refiner_layers=2, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12]
)
TINY_TEXT_ENCODER = TextEncoderConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
)
TINY_VAE = VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1)


@dataclass(frozen=True)
class ModelSet:
    """Configs of the three components (full size by default)."""

    dit: DiTConfig = DiTConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    vae: VAEConfig = VAEConfig()


TINY = ModelSet(TINY_DIT, TINY_TEXT_ENCODER, TINY_VAE)


def random_state_dict(
    model: nn.Module, *, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Random values for every tensor of a (meta-built) model: norms near 1, weights ~ 1/sqrt(fan_in).

    `device="cuda"` draws full-size weights in seconds instead of minutes; results come back on the CPU.
    """
    gen = torch.Generator(device).manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, ref in model.state_dict().items():
        shape = tuple(ref.shape)
        if ref.dim() == 1 and ("norm" in name or name.endswith(("q_norm.weight", "k_norm.weight"))):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=device)
        elif ref.dim() == 1:
            value = 0.02 * torch.randn(shape, generator=gen, device=device)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            value = torch.randn(shape, generator=gen, device=device) / math.sqrt(fan_in)
        out[name] = value.to(dtype).contiguous().cpu()
    return out


def build_random_dit(
    config: DiTConfig, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"
):
    from diffusers.models import ZImageTransformer2DModel  # not `diffusers`: mypy reads its dummies

    model = build_empty(lambda: ZImageTransformer2DModel(**config.kwargs()))
    return model, random_state_dict(model, seed=seed, dtype=dtype, device=device)


def build_random_text_encoder(
    config: TextEncoderConfig, seed: int = 1, dtype: torch.dtype = torch.float32, device: str = "cpu"
):
    from transformers import Qwen3Model

    model = build_empty(lambda: Qwen3Model(config.to_transformers()))
    sd = random_state_dict(model, seed=seed, dtype=dtype, device=device)
    sd["embed_tokens.weight"] = sd["embed_tokens.weight"] * 0.5
    return model, sd


def build_random_vae(
    config: VAEConfig, seed: int = 2, dtype: torch.dtype = torch.float32, device: str = "cpu"
):
    from diffusers.models import AutoencoderKL  # as above

    model = build_empty(lambda: AutoencoderKL(**config.kwargs()))
    return model, random_state_dict(model, seed=seed, dtype=dtype, device=device)


def write_comfy_models(
    models_dir: Path,
    models: ModelSet = TINY,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    dit_prefix: str = "",
    device: str = "cpu",
) -> dict[str, Path]:
    """Write the three ComfyUI single files (original key names) under `models_dir`."""
    _, dit = build_random_dit(models.dit, seed, dtype, device)
    _, te = build_random_text_encoder(models.text_encoder, seed + 1, dtype, device)
    _, vae = build_random_vae(models.vae, seed + 2, dtype, device)
    tensors = {
        "dit": {dit_prefix + k: v for k, v in keymaps.diffusers_dit_to_comfy(dit).items()},
        "text_encoder": {"model." + k: v for k, v in te.items()},
        "vae": keymaps.diffusers_vae_to_bfl(vae),
    }
    paths = {}
    for kind, sd in tensors.items():
        path = models_dir / COMFY_FILES[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        paths[kind] = path
    return paths


def write_diffusers_folder(
    folder: Path, models: ModelSet = TINY, *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> Path:
    """Write a Tongyi-MAI/Z-Image-Turbo-style diffusers folder with the same random weights."""
    from diffusers.models import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Model

    _, dit = build_random_dit(models.dit, seed, dtype)
    _, te = build_random_text_encoder(models.text_encoder, seed + 1, dtype)
    _, vae = build_random_vae(models.vae, seed + 2, dtype)
    for sub, cls, cfg, sd in [
        ("transformer", ZImageTransformer2DModel, models.dit.kwargs(), dit),
        ("vae", AutoencoderKL, models.vae.kwargs(), vae),
    ]:
        model = cls(**cfg)
        model.load_state_dict(sd)
        model.save_pretrained(folder / sub)
    text_encoder = Qwen3Model(models.text_encoder.to_transformers())
    text_encoder.load_state_dict(te)
    text_encoder.save_pretrained(folder / "text_encoder")
    shutil.copytree(tokenizer_dir(None), folder / "tokenizer", dirs_exist_ok=True)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    scheduler = {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": False,
    }
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler), encoding="utf-8")
    index = {
        "_class_name": "ZImagePipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder
