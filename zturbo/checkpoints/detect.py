"""Recognise what a weight file holds from its tensor names and shapes, never from its file name.

ComfyUI users rename files freely, and a VAE dropped into ``diffusion_models/`` is a common mistake, so
every loader checks the detected kind and says what the file actually is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zturbo.checkpoints.reader import Checkpoint

# Component kinds zturbo can use.
DIT = "dit"
TEXT_ENCODER = "text_encoder"
VAE = "vae"

KIND_LABELS = {DIT: "Z-Image diffusion model", TEXT_ENCODER: "Qwen3 text encoder", VAE: "Flux VAE"}

_DIT_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class Detection:
    """What a file is: a usable component (kind + layout) or a named foreign family."""

    kind: str | None  # DIT | TEXT_ENCODER | VAE | None (not usable)
    layout: str  # "comfyui" | "diffusers" | "llama.cpp" | family name for foreign files
    description: str  # for messages and `zturbo models`
    prefix: str = ""  # key prefix to strip (e.g. "model.diffusion_model.")


def _has(keys: set[str], *names: str) -> bool:
    return all(n in keys for n in names)


# Top-level marker tensors some files carry next to prefixed weights (legacy ComfyUI fp8 files).
_UNPREFIXED_MARKERS = frozenset({"scaled_fp8"})


def _strip_common_prefix(keys: set[str]) -> tuple[str, set[str]]:
    named = keys - _UNPREFIXED_MARKERS
    for prefix in (_DIT_PREFIX, "diffusion_model.", "model."):
        if named and all(k.startswith(prefix) for k in named):
            return prefix, {k[len(prefix) :] for k in named}
    return "", keys


# A ComfyUI single-file checkpoint (CheckpointLoaderSimple) names each part by a prefix: ComfyUI's
# Z-Image model class saves the DiT under model.diffusion_model., the Qwen3 encoder under
# text_encoders.qwen3_4b.transformer. and the VAE under vae. (first_stage_model. in older layouts).
BUNDLE_PREFIXES: dict[str, tuple[str, ...]] = {
    DIT: (_DIT_PREFIX,),
    TEXT_ENCODER: ("text_encoders.qwen3_4b.transformer.", "text_encoders.qwen3_4b."),
    VAE: ("vae.", "first_stage_model."),
}
CHECKPOINT = "checkpoint"


def detect(ckpt: Checkpoint) -> Detection:
    """Classify a checkpoint. Order matters: the most specific signatures are tried first."""
    keys = set(ckpt.tensors)
    found = _detect_dit(ckpt, keys) or _detect_text_encoder(ckpt, keys) or _detect_vae(ckpt, keys)
    return found or _detect_bundle(ckpt) or _detect_foreign(keys)


def bundle_part(ckpt: Checkpoint, kind: str) -> tuple[Checkpoint, Detection] | None:
    """The `kind` component of a single-file checkpoint, as its own Checkpoint, or None."""
    for prefix in BUNDLE_PREFIXES[kind]:
        if not any(k.startswith(prefix) for k in ckpt.tensors):
            continue
        part = ckpt.part(prefix)
        keys = set(part.tensors)
        found = {DIT: _detect_dit, TEXT_ENCODER: _detect_text_encoder, VAE: _detect_vae}[kind](part, keys)
        if found is not None and found.kind == kind:
            return part, found
    return None


def _detect_bundle(ckpt: Checkpoint) -> Detection | None:
    parts = [kind for kind in (DIT, TEXT_ENCODER, VAE) if bundle_part(ckpt, kind) is not None]
    if DIT not in parts or len(parts) < 2:
        return None
    labels = ", ".join(KIND_LABELS[k] for k in parts)
    return Detection(None, CHECKPOINT, f"a single-file checkpoint ({labels}); load it with Load Checkpoint")


def _detect_dit(ckpt: Checkpoint, keys: set[str]) -> Detection | None:
    prefix, bare = _strip_common_prefix(keys)
    if prefix == "model.":  # a text encoder's prefix, not a DiT's
        prefix, bare = "", keys
    if not _has(bare, "cap_embedder.1.weight") or not any(k.startswith("noise_refiner.") for k in bare):
        return None
    storage = _storage_label(ckpt)
    if "layers.0.attention.qkv.weight" in bare:
        return Detection(DIT, "comfyui", f"Z-Image DiT ({storage}ComfyUI/original layout)", prefix)
    if "layers.0.attention.to_q.weight" in bare:
        return Detection(DIT, "diffusers", f"Z-Image DiT ({storage}diffusers layout)", prefix)
    return None


def _storage_label(ckpt: Checkpoint) -> str:
    """ "GGUF, " / "int8, " / "nvfp4 + fp8 scaled, " / "": what `zturbo models` shows before the layout."""
    from zturbo.checkpoints.fp8 import header_formats

    if ckpt.format == "gguf":
        return "GGUF, "
    found = set(header_formats(ckpt.tensors).values())
    labels: list[str] = [kind for kind in ("int8", "nvfp4", "mxfp8") if kind in found]
    if any(k.endswith(("scaled_fp8", ".scale_weight")) for k in ckpt.tensors) or (
        "fp8" in found and any(k.endswith((".comfy_quant", ".weight_scale")) for k in ckpt.tensors)
    ):
        labels.append("fp8 scaled")
    return " + ".join(labels) + ", " if labels else ""


def _detect_text_encoder(ckpt: Checkpoint, keys: set[str]) -> Detection | None:
    if _has(keys, "model.layers.0.self_attn.q_norm.weight", "model.layers.0.post_attention_layernorm.weight"):
        return Detection(TEXT_ENCODER, "comfyui", "Qwen3 text encoder (Hugging Face layout)", "model.")
    if _has(keys, "layers.0.self_attn.q_norm.weight", "embed_tokens.weight"):
        return Detection(TEXT_ENCODER, "diffusers", "Qwen3 text encoder (Hugging Face layout)", "")
    if _has(keys, "token_embd.weight") and any(k.startswith("blk.0.") for k in keys):
        arch = ckpt.metadata.get("general.architecture", "unknown")
        if arch != "qwen3" or "blk.0.attn_q_norm.weight" not in keys:
            return Detection(
                None,
                "foreign",
                f"a llama.cpp GGUF language model of architecture {arch!r}; Z-Image's text encoder is "
                "Qwen3-4B (general.architecture 'qwen3')",
            )
        return Detection(TEXT_ENCODER, "llama.cpp", "Qwen3 text encoder (GGUF, llama.cpp layout)", "")
    return None


def _detect_vae(ckpt: Checkpoint, keys: set[str]) -> Detection | None:
    prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in keys) else ""
    if prefix:
        keys = {k[len(prefix) :] for k in keys if k.startswith(prefix)}
    if "decoder.conv_in.weight" not in keys:
        return None
    latent_channels = ckpt.shape(prefix + "decoder.conv_in.weight")[1]
    layout = "comfyui" if "decoder.mid.block_1.conv1.weight" in keys else "diffusers"
    if "decoder.mid_block.resnets.0.conv1.weight" not in keys and layout == "diffusers":
        return None
    if latent_channels != 16:
        return Detection(
            None, "vae", f"a {latent_channels}-channel VAE (SD1.5/SDXL family), not the 16-channel Flux VAE"
        )
    return Detection(
        VAE, layout, f"Flux VAE ({'original BFL' if layout == 'comfyui' else 'diffusers'} layout)", prefix
    )


_FOREIGN = [
    (r"(^|\.)double_blocks\.0\.img_attn\.qkv\.weight$", "a Flux diffusion model"),
    (r"(^|\.)joint_blocks\.0\.", "a Stable Diffusion 3 diffusion model"),
    (
        r"(^|\.)transformer_blocks\.0\.attn\.add_q_proj\.weight$",
        "an MMDiT diffusion model (diffusers layout)",
    ),
    (r"(^|\.)conditioner\.embedders\.", "an SDXL checkpoint"),
    (r"(^|\.)input_blocks\.0\.0\.weight$", "a Stable Diffusion UNet (SD1.5/SDXL)"),
    (r"(^|\.)down_blocks\.0\.resnets\.0\.conv1\.weight$", "a diffusers UNet"),
    (r"(^|\.)cap_embedder\.1\.weight$", "a Lumina 2 diffusion model (not Z-Image)"),
    (r"encoder\.block\.0\.layer\.0\.SelfAttention\.q\.weight$", "a T5 text encoder"),
    (r"text_model\.encoder\.layers\.0\.", "a CLIP text encoder"),
    (r"(^|\.)lora_(A|B|up|down)\b", "a LoRA"),
    (r"(^|\.)layers\.0\.self_attn\.q_proj\.weight$", "a language model without Qwen3's QK-norm (not Qwen3)"),
]


def _detect_foreign(keys: set[str]) -> Detection:
    for pattern, label in _FOREIGN:
        rx = re.compile(pattern)
        if any(rx.search(k) for k in keys):
            return Detection(None, "foreign", label)
    sample = ", ".join(sorted(keys)[:3])
    return Detection(None, "unknown", f"an unrecognised model (first tensors: {sample})")
