"""Load the three components from a ComfyUI single file, a GGUF file or a diffusers folder.

Every path goes: open header → detect kind → map keys to the reference class → infer config from
shapes → build on meta → assign. The file name is never consulted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zturbo.checkpoints import keymaps
from zturbo.checkpoints.assign import assign_state_dict, build_empty
from zturbo.checkpoints.detect import DIT, KIND_LABELS, TEXT_ENCODER, VAE, Detection, bundle_part, detect
from zturbo.checkpoints.fp8 import split_quantized_state_dict
from zturbo.checkpoints.reader import Checkpoint, open_checkpoint
from zturbo.errors import InputError, ModelFileError
from zturbo.models.configs import ConfigError, DiTConfig, TextEncoderConfig, VAEConfig

# UNETLoader's `weight_dtype` choices (plus the CLI's short "fp8"): quantize a bf16/fp32 DiT on load.
FP8_WEIGHT_DTYPES = {
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    # same storage; the stored format's own matmul where the GPU has one (fp8 `_scaled_mm`, and for int8
    # files `_int_mm`), which also quantizes the activations
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
WEIGHT_DTYPES = ("default", *FP8_WEIGHT_DTYPES)

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
    # What the engine keeps with the live module (e.g. which weight patches it carries now).
    runtime: dict[str, object] = field(default_factory=dict, repr=False, compare=False)


def read_component(source: Path, expected_kind: str) -> tuple[dict[str, object], Detection]:
    """Read all tensors of a component (file, or diffusers folder of shards) and check its kind.
    A single-file checkpoint (CheckpointLoaderSimple's) gives its part of that kind."""
    files = _component_files(source)
    state_dict: dict[str, object] = {}
    detection: Detection | None = None
    for file in files:
        ckpt = open_checkpoint(file)
        found = detect(ckpt)
        part = bundle_part(ckpt, expected_kind) if found.kind is None else None
        if part is not None:
            ckpt, found = part
        detection = detection or found
        if found.kind != expected_kind:
            raise wrong_kind_error(file, expected_kind, found)
        state_dict.update(keymaps.strip_prefix(_read(ckpt), found.prefix))
    assert detection is not None
    return state_dict, detection


def _read(ckpt: Checkpoint) -> dict[str, object]:
    """All tensors; ComfyUI's quantized layers (fp8, int8, nvfp4, mxfp8) come back as `QuantWeight`s with
    their marker and scale keys consumed."""
    tensors = ckpt.load()
    if ckpt.format != "safetensors":
        return tensors
    plain, quantized = split_quantized_state_dict(tensors, metadata=ckpt.metadata, source=ckpt.path)  # type: ignore[arg-type]
    return {**plain, **quantized}


def wrong_kind_error(path: Path, expected_kind: str, found: Detection) -> ModelFileError:
    what = KIND_LABELS.get(found.kind or "", None) or found.description
    return ModelFileError(
        path, f"is {what}, not a {KIND_LABELS[expected_kind]}. Check which folder it belongs in."
    )


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
        kwargs: dict[str, Any] = {
            k: (tuple(v) if k.startswith("all_") else v) for k, v in raw.items() if k in fields
        }
        return DiTConfig(**kwargs)
    return DiTConfig.from_shapes(shapes)


def _shapes(state_dict: dict[str, object]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}  # type: ignore[attr-defined]


def load_dit(
    source: Path,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    weight_dtype: str = "default",
    work_device: torch.device | str | None = None,
) -> LoadedComponent:
    """The Z-Image diffusion transformer as diffusers' ZImageTransformer2DModel.

    `weight_dtype` other than "default" quantizes the file's plain weights to fp8 on load (see
    `quantize_dit_on_load`); `work_device` is where that arithmetic runs (the GPU, even when the result
    is kept on the host for streaming), default `device`.
    """
    from diffusers.models.transformers.transformer_z_image import ZImageTransformer2DModel

    if weight_dtype not in WEIGHT_DTYPES:
        raise InputError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)} (got {weight_dtype!r})")
    state_dict, detection = read_component(source, DIT)
    if detection.layout == "comfyui":
        state_dict = keymaps.comfy_dit_to_diffusers(state_dict)
    try:
        config = _dit_config(source, _shapes(state_dict))
    except ConfigError as exc:
        raise ModelFileError(source, f"does not look like a Z-Image model: {exc}") from exc
    if weight_dtype in FP8_WEIGHT_DTYPES:
        state_dict = quantize_dit_on_load(
            state_dict, FP8_WEIGHT_DTYPES[weight_dtype], device=device, work_device=work_device or device
        )
    model = build_empty(lambda: ZImageTransformer2DModel(**config.kwargs()))
    fast = weight_dtype == "fp8_e4m3fn_fast"
    assign_state_dict(model, state_dict, dtype=dtype, device=device, source=source, use_scaled_mm=fast)
    return LoadedComponent(model, source, detection, dtype)


def quantize_dit_on_load(
    state_dict: dict[str, object],
    fp8_dtype: torch.dtype,
    *,
    device: torch.device | str,
    work_device: torch.device | str,
) -> dict[str, object]:
    """Quantize the main blocks' 2-D weights to fp8 with per-row scales, one tensor at a time.

    The same tensors the published GGUF files quantize (`dit_tensor_is_quantized`): embedders,
    refiners, final layer, pad tokens and norms stay in the compute dtype, because they are small and
    the first and last layers are the most sensitive to rounding. Weights already quantized in the file
    are left as they are. Each result goes to `device` at once, so at most one expanded weight exists.
    """
    from zturbo.quant.fp8 import quantize_to_fp8
    from zturbo.quant.selection import dit_tensor_is_quantized

    out: dict[str, object] = {}
    for name, value in state_dict.items():
        if (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and dit_tensor_is_quantized(name, tuple(value.shape))
        ):
            value = quantize_to_fp8(value.to(work_device), dtype=fp8_dtype).to(device)
        out[name] = value
    return out


def load_text_encoder(
    source: Path, *, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> LoadedComponent:
    """The Qwen3 text encoder as transformers' Qwen3Model."""
    from transformers import Qwen3Model

    state_dict, detection = read_component(source, TEXT_ENCODER)
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
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    state_dict, detection = read_component(source, VAE)
    if detection.layout == "comfyui":
        state_dict = keymaps.bfl_vae_to_diffusers(state_dict)
    try:
        config = VAEConfig.from_shapes(_shapes(state_dict))
    except ConfigError as exc:
        raise ModelFileError(source, f"does not look like the Flux VAE: {exc}") from exc
    model = build_empty(lambda: AutoencoderKL(**config.kwargs()))
    assign_state_dict(model, state_dict, dtype=dtype, device=device, source=source)
    return LoadedComponent(model, source, detection, dtype)
