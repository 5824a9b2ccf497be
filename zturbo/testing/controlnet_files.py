"""Tiny random-weight Z-Image Fun ControlNet files in every release's layout, for tests.

Each release is written as alibaba-pai ships it (VideoX-Fun's names, no prefix; 2.0 with its untrained
all-zero `control_noise_refiner`), optionally with ComfyUI's fused attention names or as a diffusers
folder. Sizes come from a DiT config (`CONTROL_DIT`: the tiny test DiT with the released 30 main
layers, so the released control-block counts and places apply unchanged).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from zturbo.checkpoints.assign import build_empty
from zturbo.checkpoints.controlnet import MAIN_LAYERS
from zturbo.models.configs import DiTConfig
from zturbo.models.controlnet import CONTROL_LAYERS, CONTROL_REFINER, PLAIN, ControlNetSpec
from zturbo.testing.synthetic import TINY, TINY_DIT, ModelSet, random_state_dict

CONTROL_DIT = dataclasses.replace(TINY_DIT, n_layers=30)
CONTROL_MODELS = ModelSet(CONTROL_DIT, TINY.text_encoder, TINY.vae)
# release → (control channels, refiner, control blocks); Tile 2.1 and the 2602-8steps files share 2.1's
RELEASES = {
    "1.0": (16, PLAIN, 6),
    "2.0": (33, CONTROL_LAYERS, 15),
    "2.1": (33, CONTROL_REFINER, 15),
    "2.1 Lite": (33, CONTROL_REFINER, 3),
}
# The published file names (what the ComfyUI templates and VideoX-Fun examples ask for).
FILE_NAMES = {
    "1.0": "Z-Image-Turbo-Fun-Controlnet-Union.safetensors",
    "2.0": "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors",
    "2.1": "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors",
    "2.1 Lite": "Z-Image-Turbo-Fun-Controlnet-Union-2.1-lite-2602-8steps.safetensors",
}


def spec_for(release: str, dit: DiTConfig = CONTROL_DIT) -> ControlNetSpec:
    in_dim, refiner, blocks = RELEASES[release]
    return ControlNetSpec(release, in_dim, blocks, refiner, dit.dim, dit.n_heads)


def controlnet_state_dict(
    release: str,
    dit: DiTConfig = CONTROL_DIT,
    *,
    seed: int = 7,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """Random weights under diffusers' names; 2.0 includes its zero refiner, as the released file does.
    `device="cuda"` draws full-size weights (benchmarks) in seconds."""
    from diffusers.models import ZImageControlNetModel  # not `diffusers`: mypy reads its dummies

    spec = spec_for(release, dit)
    kwargs = spec.diffusers_kwargs(MAIN_LAYERS)  # places matter only to diffusers' forward
    if spec.refiner == CONTROL_LAYERS:  # build the shipped (unused) control refiner too
        kwargs["add_control_noise_refiner"] = CONTROL_REFINER
    model = build_empty(lambda: ZImageControlNetModel(**kwargs))
    state = random_state_dict(model, seed=seed, dtype=dtype, device=device)
    if spec.refiner == CONTROL_LAYERS:
        for key in state:
            if key.startswith("control_noise_refiner.") and "_proj." in key:
                state[key] = torch.zeros_like(state[key])
    return state


def to_comfy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's in-memory names: fused q‖k‖v, `attention.out`, `q_norm`/`k_norm`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".attention.to_q.weight"):
            base = key[: -len("to_q.weight")]
            out[base + "qkv.weight"] = torch.cat(
                [state[base + n + ".weight"] for n in ("to_q", "to_k", "to_v")]
            )
        elif not key.endswith((".attention.to_k.weight", ".attention.to_v.weight")):
            new = key.replace(".attention.to_out.0.", ".attention.out.")
            new = new.replace(".attention.norm_q.", ".attention.q_norm.").replace(
                ".attention.norm_k.", ".attention.k_norm."
            )
            out[new] = value
    return out


def write_controlnet(
    path: Path,
    release: str,
    dit: DiTConfig = CONTROL_DIT,
    *,
    layout: str = "original",
    seed: int = 7,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> Path:
    """Write one ControlNet; `layout` "original" | "comfyui" (single files) | "diffusers" (a folder)."""
    state = controlnet_state_dict(release, dit, seed=seed, dtype=dtype, device=device)
    if layout == "comfyui":
        state = to_comfy_names(state)
    if layout == "diffusers":
        spec = spec_for(release, dit)
        if spec.refiner == CONTROL_LAYERS:  # diffusers' converter drops 2.0's unused refiner
            state = {k: v for k, v in state.items() if not k.startswith("control_noise_refiner.")}
        path.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "ZImageControlNetModel", **spec.diffusers_kwargs(MAIN_LAYERS)}
        (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(path / "diffusion_pytorch_model.safetensors")
        )
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
