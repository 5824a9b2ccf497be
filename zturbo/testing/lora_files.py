"""Tiny LoRA files with known factors, written in every layout trainers publish.

The writers spell keys with their own small tables (not zturbo.lora's), so a test that reads them back
checks zturbo's key maps against an independent statement of each layout. Module names given to the
writers are diffusers' (`layers.0.attention.to_q`); `layers.0.attention.qkv` is Z-Image's fused native
module (written only by the native layouts).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from zturbo.testing.synthetic import TINY, build_random_dit, build_random_text_encoder

Tensor = torch.Tensor


@dataclass
class LoraFactors:
    """ΔW = up @ down · (alpha / rank), alpha None meaning scale 1."""

    up: Tensor  # (out, rank)
    down: Tensor  # (rank, in)
    alpha: float | None = None

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.down.shape[0]


def dit_shapes(config=TINY.dit) -> dict[str, tuple[int, ...]]:
    """Reference-layout parameter shapes of a (tiny) DiT: diffusers' ZImageTransformer2DModel names."""
    _, sd = build_random_dit(config)
    return {k: tuple(v.shape) for k, v in sd.items()}


def text_encoder_shapes(config=TINY.text_encoder) -> dict[str, tuple[int, ...]]:
    _, sd = build_random_text_encoder(config)
    return {k: tuple(v.shape) for k, v in sd.items()}


def module_shape(shapes: dict[str, tuple[int, ...]], module: str) -> tuple[int, int]:
    """(out, in) of a module; a native qkv is the three projections stacked."""
    if module.endswith(".attention.qkv"):
        base = module[: -len("qkv")]
        parts = [shapes[f"{base}{p}.weight"] for p in ("to_q", "to_k", "to_v")]
        return sum(p[0] for p in parts), parts[0][1]
    out, inp = shapes[module + ".weight"]
    return out, inp


def random_factors(
    shapes: dict[str, tuple[int, ...]],
    modules: list[str],
    *,
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, LoraFactors]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for module in modules:
        rows, cols = module_shape(shapes, module)
        up = (torch.randn(rows, rank, generator=gen) * 0.1).to(dtype)
        down = (torch.randn(rank, cols, generator=gen) / math.sqrt(cols)).to(dtype)
        out[module] = LoraFactors(up, down, alpha)
    return out


def block_modules(groups: tuple[str, ...] = ("layers",), indices=(0, 1), parts=None) -> list[str]:
    parts = parts or [
        "attention.to_q",
        "attention.to_k",
        "attention.to_v",
        "attention.to_out.0",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
    ]
    return [f"{g}.{i}.{p}" for g in groups for i in indices for p in parts]


# --- key spellings ---

_NATIVE = [
    (".attention.to_out.0", ".attention.out"),
    (".attention.norm_q", ".attention.q_norm"),
    (".attention.norm_k", ".attention.k_norm"),
]


def native_name(module: str) -> str:
    for a, b in _NATIVE:
        module = module.replace(a, b)
    if module.startswith("all_x_embedder.2-1"):
        return "x_embedder" + module[len("all_x_embedder.2-1") :]
    if module.startswith("all_final_layer.2-1."):
        return "final_layer." + module[len("all_final_layer.2-1.") :]
    return module


def _dot(module: str) -> str:
    for p in "qkv":
        module = module.replace(f".to_{p}", f".to.{p}")
    return module


# layout → (module path → key stem, down suffix, up suffix, writes .alpha keys)
DIT_LAYOUTS = {
    "diffusers": (lambda m: f"transformer.{m}", ".lora_A.weight", ".lora_B.weight", False),
    "peft": (lambda m: f"base_model.model.{m}", ".lora_A.weight", ".lora_B.weight", False),
    "ai-toolkit": (lambda m: f"diffusion_model.{m}", ".lora_A.weight", ".lora_B.weight", True),
    "bare": (lambda m: m, ".lora_A.weight", ".lora_B.weight", False),
    "diffsynth": (lambda m: m, ".lora_A.default.weight", ".lora_B.default.weight", False),
    "comfy": (lambda m: f"diffusion_model.{native_name(m)}", ".lora_down.weight", ".lora_up.weight", True),
    "comfy-full-prefix": (
        lambda m: f"model.diffusion_model.{native_name(m)}",
        ".lora_down.weight",
        ".lora_up.weight",
        True,
    ),
    "comfy-unet": (
        lambda m: "lora_unet_" + native_name(m).replace(".", "_"),
        ".lora_down.weight",
        ".lora_up.weight",
        True,
    ),
    "comfy-diffusers-names": (lambda m: f"diffusion_model.{m}", ".lora_down.weight", ".lora_up.weight", True),
    "kohya": (lambda m: "lora_unet_" + m.replace(".", "_"), ".lora_down.weight", ".lora_up.weight", True),
    "kohya-double-underscore": (
        lambda m: "lora_unet__" + m.replace(".", "_"),
        ".lora_down.weight",
        ".lora_up.weight",
        True,
    ),
    "lycoris": (lambda m: "lycoris_" + m.replace(".", "_"), ".lora_down.weight", ".lora_up.weight", True),
    "onetrainer": (
        lambda m: "lora_transformer_" + m.replace(".", "_"),
        ".lora_down.weight",
        ".lora_up.weight",
        True,
    ),
    "dot": (lambda m: f"diffusion_model.{_dot(m)}", ".lora.down.weight", ".lora.up.weight", True),
}
TE_LAYOUTS = {
    "lora_te": (lambda m: "lora_te_" + m.replace(".", "_"), ".lora_down.weight", ".lora_up.weight", True),
    "text_encoder": (lambda m: f"text_encoder.{m}", ".lora_A.weight", ".lora_B.weight", False),
    "comfy_te": (
        lambda m: f"text_encoders.qwen3_4b.transformer.model.{m}",
        ".lora_down.weight",
        ".lora_up.weight",
        True,
    ),
    "invokeai": (lambda m: f"lora_qwen3-{m}", ".lora_down.weight", ".lora_up.weight", True),
}


def lora_tensors(factors: dict[str, LoraFactors], layout: str, table=None) -> dict[str, Tensor]:
    """The safetensors entries of a plain LoRA in `layout` (alpha keys only where the layout has them)."""
    stem, down_s, up_s, has_alpha = (table or DIT_LAYOUTS)[layout]
    out: dict[str, Tensor] = {}
    for module, f in factors.items():
        key = stem(module)
        out[key + down_s] = f.down.contiguous()
        out[key + up_s] = f.up.contiguous()
        if has_alpha and f.alpha is not None:
            alpha_key = stem(module) if layout != "dot" else f"diffusion_model.{module}"
            out[alpha_key + ".alpha"] = torch.tensor(float(f.alpha))
    return out


def peft_metadata(factors: dict[str, LoraFactors], prefix: str = "transformer") -> dict[str, str]:
    """diffusers' `lora_adapter_metadata` (LoraConfig fields, packed under `transformer.`)."""
    ranks = {m: f.down.shape[0] for m, f in factors.items()}
    alphas = {m: (f.alpha if f.alpha is not None else f.down.shape[0]) for m, f in factors.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    lora_alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "r": r,
        "lora_alpha": lora_alpha,
        "rank_pattern": {f"^{m}": v for m, v in ranks.items() if v != r},
        "alpha_pattern": {f"^{m}": v for m, v in alphas.items() if v != lora_alpha},
        "target_modules": sorted(factors),
        "use_dora": False,
        "lora_bias": False,
    }
    packed = {f"{prefix}.{k}": v for k, v in config.items()}
    return {"format": "pt", "lora_adapter_metadata": json.dumps(packed)}


def write_lora(
    path: Path,
    factors: dict[str, LoraFactors],
    layout: str = "diffusers",
    *,
    text_encoder: dict[str, LoraFactors] | None = None,
    te_layout: str = "lora_te",
    metadata: dict[str, str] | None = None,
    extra: dict[str, Tensor] | None = None,
) -> Path:
    """A plain LoRA on the DiT (and optionally the text encoder); lora_A layouts carry alphas as PEFT
    metadata, the others as `.alpha` keys."""
    tensors = lora_tensors(factors, layout)
    meta = dict(metadata or {})
    if layout in ("diffusers", "peft", "bare", "diffsynth") and any(
        f.alpha is not None for f in factors.values()
    ):
        meta = {**peft_metadata(factors), **meta}
    if text_encoder:
        tensors |= lora_tensors(text_encoder, te_layout, TE_LAYOUTS)
    tensors |= extra or {}
    return write_tensors(path, tensors, meta)


def write_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or None)
    return path


def adapter_tensors(modules: dict[str, dict[str, Tensor]], layout: str) -> dict[str, Tensor]:
    """Any adapter's tensors (`{module: {".lokr_w1": t, ".alpha": t, ...}}`) under `layout`'s key stems."""
    stem = DIT_LAYOUTS[layout][0]
    return {stem(m) + suffix: t for m, parts in modules.items() for suffix, t in parts.items()}


def foreign_lora(family: str) -> dict[str, Tensor]:
    """A few keys of a LoRA for another model family, spelled as their trainers write them."""
    r = torch.zeros
    if family == "sdxl":
        stems = [
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
        ]
    elif family == "flux":
        stems = [
            "lora_unet_double_blocks_0_img_attn_qkv",
            "lora_unet_double_blocks_0_txt_mlp_0",
            "lora_unet_single_blocks_0_linear1",
            "lora_unet_single_blocks_1_linear2",
        ]
    elif family == "flux-diffusers":
        stems = [
            "transformer.transformer_blocks.0.attn.to_q",
            "transformer.transformer_blocks.0.attn.add_q_proj",
            "transformer.single_transformer_blocks.0.proj_mlp",
            "transformer.single_transformer_blocks.1.attn.to_k",
        ]
    else:
        raise ValueError(family)
    out = {}
    for stem in stems:
        out[stem + ".lora_down.weight"] = r(4, 8)
        out[stem + ".lora_up.weight"] = r(8, 4)
        out[stem + ".alpha"] = torch.tensor(4.0)
    return out


def apply_patches(patches, base: dict[str, Tensor], strength: float = 1.0) -> dict[str, Tensor]:
    """What the engine does with patches, in the plainest form: merge each into a copy of `base`
    (reference-layout tensors), one after another, in float32."""
    out = {k: v.float().clone() for k, v in base.items()}
    for patch in patches:
        weight = torch.cat([out[t] for t in patch.targets], dim=0)
        merged = patch.adapter.merged(weight, strength)
        for target, part in zip(patch.targets, merged.split(list(patch.rows), dim=0), strict=True):
            out[target] = part.reshape(out[target].shape)
    return out
