"""Load the three components from a ComfyUI single file, a GGUF file or a diffusers folder.

Every path goes: open header → detect kind → map keys to the reference class → infer config from
shapes → build on meta → assign. The file name is never consulted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zturbo.checkpoints import keymaps
from zturbo.checkpoints.assign import assign_state_dict, build_empty
from zturbo.checkpoints.detect import DIT, KIND_LABELS, TEXT_ENCODER, VAE, Detection, detect
from zturbo.checkpoints.reader import Checkpoint, open_checkpoint
from zturbo.errors import ModelFileError
from zturbo.models.configs import ConfigError, DiTConfig, TextEncoderConfig, VAEConfig

# Tensors a text-encoder file may carry that the encoder does not use (the LM head is tied to the
# embedding, and Z-Image reads hidden states, not logits).
TEXT_ENCODER_UNUSED_KEYS = frozenset({"lm_head.weight"})


@dataclass
class LoadedComponent:
    """A component ready to run, with what it was loaded from (for metadata and `zturbo models`)."""

    module: nn.Module
    source: Path
    detection: Detection
    dtype: torch.dtype


def read_component(source: Path, expected_kind: str) -> tuple[dict[str, object], Detection, Path]:
    """Read all tensors of a component (file, or diffusers folder of shards) and check its kind."""
    files = _component_files(source)
    state_dict: dict[str, object] = {}
    detection: Detection | None = None
    for file in files:
        ckpt = open_checkpoint(file)
        found = detect(ckpt)
        detection = detection or found
        if found.kind != expected_kind:
            raise wrong_kind_error(file, expected_kind, found)
        state_dict.update(keymaps.strip_prefix(_read(ckpt), found.prefix))
    assert detection is not None
    return state_dict, detection, source


def wrong_kind_error(path: Path, expected_kind: str, found: Detection) -> ModelFileError:
    what = KIND_LABELS.get(found.kind or "", None) or found.description
    return ModelFileError(
        path, f"is {what}, not a {KIND_LABELS[expected_kind]}. Check which folder it belongs in."
    )


def _read(ckpt: Checkpoint) -> dict[str, object]:
    return ckpt.load()


def _component_files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in (".safetensors", ".sft", ".gguf"))
        if not files:
            raise ModelFileError(source, "folder holds no .safetensors files")
        _check_shard_index(source, files)
        return files
    return [source]


def _check_shard_index(folder: Path, files: list[Path]) -> None:
    for index in folder.glob("*.safetensors.index.json"):
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        missing = sorted(shards - {f.name for f in files})
        if missing:
            raise ModelFileError(
                folder, f"is missing shard files listed in {index.name}: {', '.join(missing)}"
            )


def _dit_config(source: Path, shapes: dict) -> DiTConfig:
    config_file = source / "config.json" if source.is_dir() else None
    if config_file and config_file.is_file():
        raw = json.loads(config_file.read_text(encoding="utf-8"))
        fields = DiTConfig.__dataclass_fields__
        return DiTConfig(
            **{k: (tuple(v) if k.startswith("all_") else v) for k, v in raw.items() if k in fields}
        )
    return DiTConfig.from_shapes(shapes)


def _shapes(state_dict: dict[str, object]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}  # type: ignore[attr-defined]


def load_dit(source: Path, *, dtype: torch.dtype, device: torch.device | str = "cpu") -> LoadedComponent:
    """The Z-Image diffusion transformer as diffusers' ZImageTransformer2DModel."""
    from diffusers import ZImageTransformer2DModel

    state_dict, detection, _ = read_component(source, DIT)
    if detection.layout == "comfyui":
        state_dict = keymaps.comfy_dit_to_diffusers(state_dict)
    try:
        config = _dit_config(source, _shapes(state_dict))
    except ConfigError as exc:
        raise ModelFileError(source, f"does not look like a Z-Image model: {exc}") from exc
    model = build_empty(lambda: ZImageTransformer2DModel(**config.kwargs()))
    assign_state_dict(model, state_dict, dtype=dtype, device=device, source=source)
    return LoadedComponent(model, source, detection, dtype)


def load_text_encoder(
    source: Path, *, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> LoadedComponent:
    """The Qwen3 text encoder as transformers' Qwen3Model."""
    from transformers import Qwen3Model

    state_dict, detection, _ = read_component(source, TEXT_ENCODER)
    if detection.layout == "llama.cpp":
        from zturbo.checkpoints.gguf import llama_cpp_qwen3_to_hf

        state_dict = {llama_cpp_qwen3_to_hf(k): v for k, v in state_dict.items()}
    state_dict = {k: v for k, v in state_dict.items() if k not in TEXT_ENCODER_UNUSED_KEYS}
    try:
        config = TextEncoderConfig.from_shapes(_shapes(state_dict)).to_transformers()
    except ConfigError as exc:
        raise ModelFileError(source, f"does not look like a Qwen3 text encoder: {exc}") from exc
    model = build_empty(lambda: Qwen3Model(config))
    assign_state_dict(model, state_dict, dtype=dtype, device=device, source=source)
    return LoadedComponent(model, source, detection, dtype)


def load_vae(source: Path, *, dtype: torch.dtype, device: torch.device | str = "cpu") -> LoadedComponent:
    """The Flux VAE as diffusers' AutoencoderKL."""
    from diffusers import AutoencoderKL

    state_dict, detection, _ = read_component(source, VAE)
    if detection.layout == "comfyui":
        state_dict = keymaps.bfl_vae_to_diffusers(state_dict)
    try:
        config = VAEConfig.from_shapes(_shapes(state_dict))
    except ConfigError as exc:
        raise ModelFileError(source, f"does not look like the Flux VAE: {exc}") from exc
    model = build_empty(lambda: AutoencoderKL(**config.kwargs()))
    assign_state_dict(model, state_dict, dtype=dtype, device=device, source=source)
    return LoadedComponent(model, source, detection, dtype)
