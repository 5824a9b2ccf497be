"""One key map per file layout: original/ComfyUI names → the reference classes' names.

Maps only rename, split fused tensors into views, or reshape views: nothing is copied, so converting a
memory-mapped 12 GB file costs no RAM. Keys a layout is known to carry but the model does not use are
listed explicitly (never silently dropped): anything else left over is an error at load time.
"""

from __future__ import annotations

import re
from collections.abc import Callable

StateDict = dict[str, object]

# --- Z-Image DiT: original Lumina2/NextDiT names (ComfyUI files) -> diffusers ZImageTransformer2DModel ---

_DIT_RENAMES = [
    (re.compile(r"^x_embedder\."), "all_x_embedder.2-1."),
    (re.compile(r"^final_layer\."), "all_final_layer.2-1."),
    (re.compile(r"\.attention\.out\."), ".attention.to_out.0."),
    (re.compile(r"\.attention\.q_norm\."), ".attention.norm_q."),
    (re.compile(r"\.attention\.k_norm\."), ".attention.norm_k."),
]

# Lumina2 checkpoints may carry a top-level RMSNorm that Z-Image's final layer (LayerNorm without affine)
# never uses; diffusers' own converter drops it too.
DIT_UNUSED_KEYS = frozenset({"norm_final.weight"})


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for rx, new in rules:
        key = rx.sub(new, key)
    return key


def strip_prefix(sd: StateDict, prefix: str) -> StateDict:
    if not prefix:
        return sd
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}


def split_rows(tensor: object, parts: int) -> list[object]:
    """Split a fused weight along dim 0 into equal views (works for plain and quantized tensors)."""
    if hasattr(tensor, "chunk"):
        return list(tensor.chunk(parts, dim=0))
    raise TypeError(f"cannot split {type(tensor).__name__}")


def comfy_dit_to_diffusers(
    sd: StateDict, split: Callable[[object, int], list[object]] = split_rows
) -> StateDict:
    """Rename a ComfyUI Z-Image DiT state dict; the fused qkv weight becomes to_q/to_k/to_v views."""
    out: StateDict = {}
    for key, value in sd.items():
        if key in DIT_UNUSED_KEYS:
            continue
        if key.endswith(".attention.qkv.weight"):
            base = key[: -len("qkv.weight")]
            q, k, v = split(value, 3)
            out[base + "to_q.weight"], out[base + "to_k.weight"], out[base + "to_v.weight"] = q, k, v
            continue
        out[_rename(key, _DIT_RENAMES)] = value
    return out


def diffusers_dit_to_comfy(sd: StateDict) -> StateDict:
    """The inverse map (used to write ComfyUI-layout files, e.g. by tests and benchmarks)."""
    import torch

    inverse = [
        (re.compile(r"^all_x_embedder\.2-1\."), "x_embedder."),
        (re.compile(r"^all_final_layer\.2-1\."), "final_layer."),
        (re.compile(r"\.attention\.to_out\.0\."), ".attention.out."),
        (re.compile(r"\.attention\.norm_q\."), ".attention.q_norm."),
        (re.compile(r"\.attention\.norm_k\."), ".attention.k_norm."),
    ]
    out: StateDict = {}
    for key, value in sd.items():
        if key.endswith(".attention.to_q.weight"):
            base = key[: -len("to_q.weight")]
            fused = torch.cat([sd[base + n + ".weight"] for n in ("to_q", "to_k", "to_v")], dim=0)  # type: ignore[misc]
            out[_rename(base, inverse) + "qkv.weight"] = fused
        elif key.endswith((".attention.to_k.weight", ".attention.to_v.weight")):
            continue
        else:
            out[_rename(key, inverse)] = value
    return out


# --- Flux VAE: original BFL names (ComfyUI ae.safetensors) -> diffusers AutoencoderKL ---

_VAE_BLOCK_RENAMES = [
    (re.compile(r"\.nin_shortcut\."), ".conv_shortcut."),
    (re.compile(r"\.mid\.block_(\d)\."), lambda m: f".mid_block.resnets.{int(m.group(1)) - 1}."),
    (re.compile(r"\.mid\.attn_1\.norm\."), ".mid_block.attentions.0.group_norm."),
    (re.compile(r"\.mid\.attn_1\.q\."), ".mid_block.attentions.0.to_q."),
    (re.compile(r"\.mid\.attn_1\.k\."), ".mid_block.attentions.0.to_k."),
    (re.compile(r"\.mid\.attn_1\.v\."), ".mid_block.attentions.0.to_v."),
    (re.compile(r"\.mid\.attn_1\.proj_out\."), ".mid_block.attentions.0.to_out.0."),
    (re.compile(r"^(encoder|decoder)\.norm_out\."), r"\1.conv_norm_out."),
    (re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\."), r"encoder.down_blocks.\1.resnets.\2."),
    (re.compile(r"^encoder\.down\.(\d+)\.downsample\."), r"encoder.down_blocks.\1.downsamplers.0."),
]
_VAE_ATTN_LINEAR = re.compile(r"\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def bfl_vae_to_diffusers(sd: StateDict) -> StateDict:
    """Rename an original Flux VAE state dict. Decoder `up` blocks are stored in reverse order; the
    attention's 1x1 convolutions become linear weights (a reshape view)."""
    levels = 1 + max(
        (int(m.group(1)) for k in sd if (m := re.match(r"^decoder\.up\.(\d+)\.", k))), default=-1
    )
    out: StateDict = {}
    for key, value in sd.items():
        new = key
        if m := re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(?:(\d+)\.)?", key):
            level = levels - 1 - int(m.group(1))
            tail = f"resnets.{m.group(3)}." if m.group(2) == "block" else "upsamplers.0."
            new = f"decoder.up_blocks.{level}.{tail}" + key[m.end() :]
        for rx, repl in _VAE_BLOCK_RENAMES:
            new = rx.sub(repl, new)
        if _VAE_ATTN_LINEAR.search(new) and hasattr(value, "dim") and value.dim() == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


def diffusers_vae_to_bfl(sd: StateDict) -> StateDict:
    """Inverse of bfl_vae_to_diffusers (tests and benchmarks write ComfyUI-layout VAE files with it)."""
    levels = 1 + max(
        (int(m.group(1)) for k in sd if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))), default=-1
    )
    rules = [
        (re.compile(r"\.conv_shortcut\."), ".nin_shortcut."),
        (re.compile(r"\.mid_block\.resnets\.(\d)\."), lambda m: f".mid.block_{int(m.group(1)) + 1}."),
        (re.compile(r"\.mid_block\.attentions\.0\.group_norm\."), ".mid.attn_1.norm."),
        (re.compile(r"\.mid_block\.attentions\.0\.to_(q|k|v)\."), r".mid.attn_1.\1."),
        (re.compile(r"\.mid_block\.attentions\.0\.to_out\.0\."), ".mid.attn_1.proj_out."),
        (re.compile(r"^(encoder|decoder)\.conv_norm_out\."), r"\1.norm_out."),
        (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."), r"encoder.down.\1.block.\2."),
        (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\."), r"encoder.down.\1.downsample."),
    ]
    out: StateDict = {}
    for key, value in sd.items():
        new = key
        if m := re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.", key):
            level = levels - 1 - int(m.group(1))
            tail = f"block.{m.group(3)}." if m.group(2) == "resnets" else "upsample."
            new = f"decoder.up.{level}.{tail}" + key[m.end() :]
        for rx, repl in rules:
            new = rx.sub(repl, new)
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", new):
            value = value.reshape(*value.shape, 1, 1)
        out[new] = value
    return out
