"""LoRA key names → (tensor role, module of the reference model).

A key is `<prefix><module path><suffix>`. The suffix says which tensor of which adapter it is
(`.lora_A.weight`, `.lora_down.weight`, `.alpha`, `.lokr_w1`, `.diff`, ...). The prefix says which
component it patches (`transformer.`, `diffusion_model.`, `lora_unet_`, `lycoris_`, `text_encoder.`,
`lora_te_`, ...). The module path is in diffusers names (`attention.to_q`, `to_out.0`,
`all_x_embedder.2-1`) or Z-Image's original ones (`attention.qkv`, `attention.out`, `x_embedder`,
`final_layer`), with dots (diffusers, ComfyUI), underscores (kohya, musubi-tuner, SimpleTuner's LyCORIS)
or a mixture (the "dot" format's `to.q`). Every spelling is reduced to its underscored form, which is
unambiguous for both models, and looked up in one table per model. Targets are parameter names of the
reference classes: diffusers' ZImageTransformer2DModel and transformers' Qwen3Model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIT = "dit"
TEXT_ENCODER = "text_encoder"

# suffix → role. Longest suffixes first (".lora_B.default.weight" before ".weight"-less matches).
_ROLES = {
    ".lora_A.default.weight": "down",
    ".lora_B.default.weight": "up",
    ".lora_B.default.bias": "up_bias",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_B.bias": "up_bias",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
    ".lora_magnitude_vector.default.weight": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",
    ".lora_magnitude_vector": "magnitude",
    ".dora_scale": "dora_scale",
    ".alpha": "alpha",
    ".lokr_w1_a": "lokr_w1_a",
    ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2_a": "lokr_w2_a",
    ".lokr_w2_b": "lokr_w2_b",
    ".lokr_w1": "lokr_w1",
    ".lokr_w2": "lokr_w2",
    ".lokr_t2": "lokr_t2",
    ".hada_w1_a": "hada_w1_a",
    ".hada_w1_b": "hada_w1_b",
    ".hada_w2_a": "hada_w2_a",
    ".hada_w2_b": "hada_w2_b",
    ".hada_t1": "hada_t1",
    ".hada_t2": "hada_t2",
    ".diff_b": "diff_b",
    ".diff": "diff",
    ".b_norm": "diff_b",
    ".w_norm": "diff",
}
_SUFFIXES = sorted(_ROLES, key=len, reverse=True)

# Adapter kinds other tools know that zturbo does not apply: named in the report, never guessed at.
UNSUPPORTED_SUFFIXES = {
    ".lora_mid.weight": "LoCon Tucker core (convolutions only)",
    ".reshape_weight": "ComfyUI reshape patch",
    ".set_weight": "ComfyUI set-weight patch",
    ".a1.weight": "GLoRA",
    ".a2.weight": "GLoRA",
    ".b1.weight": "GLoRA",
    ".b2.weight": "GLoRA",
    ".oft_blocks": "OFT",
    ".oft_diag": "OFT",
    ".rescale": "OFT/BOFT",
    ".bias_indices": "LyCORIS sparse bias",
    ".bias_values": "LyCORIS sparse bias",
    ".bias_size": "LyCORIS sparse bias",
    ".on_input": "IA3",
}


def split_key(key: str) -> tuple[str, str] | None:
    """`(module path with prefix, role)`, or None when the suffix is not one of an adapter's."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], _ROLES[suffix]
    return None


def unsupported_kind(key: str) -> str | None:
    return next((what for s, what in UNSUPPORTED_SUFFIXES.items() if key.endswith(s)), None)


# --- prefixes: (prefix, component or None for "either", style label) ---

_PREFIXES = [
    ("base_model.model.", None, "peft"),
    ("text_encoder.", TEXT_ENCODER, "diffusers"),
    ("lora_qwen3-", TEXT_ENCODER, "invokeai"),
    ("lora_te1_", TEXT_ENCODER, "kohya"),
    ("lora_te_", TEXT_ENCODER, "kohya"),
    ("model.diffusion_model.", DIT, "comfyui"),
    ("diffusion_model.", DIT, "diffusion_model"),
    ("transformer.", DIT, "diffusers"),
    ("lora_transformer-", DIT, "invokeai"),
    ("lora_transformer_", DIT, "onetrainer"),
    ("lora_unet_", DIT, "kohya"),
    ("lycoris_", DIT, "lycoris"),
    ("unet.", DIT, "diffusers"),
]


@dataclass(frozen=True)
class Module:
    """One module of a reference model that a group of keys patches."""

    component: str  # DIT | TEXT_ENCODER
    names: tuple[str, ...]  # reference-layout module names (several: a fused native module)
    naming: str  # "diffusers" | "native" (Z-Image's original names) | "shared" (the same in both) | "hf"
    group: str  # "layers", "noise_refiner", "context_refiner", "top" (DiT); "layers", "top" (encoder)
    index: int | None  # block index, None for top-level modules
    part: str  # the module within its block, as written: "attention.to_q", "attention.qkv", ...
    is_param: bool = False  # the "module" is itself a parameter (pad tokens): targets carry no suffix

    def targets(self, role: str) -> tuple[str, ...]:
        if self.is_param:
            return self.names
        suffix = ".bias" if role in ("diff_b", "up_bias") else ".weight"
        return tuple(n + suffix for n in self.names)


_QKV = ("attention.to_q", "attention.to_k", "attention.to_v")
# underscored part → (reference names, naming)
_DIT_BLOCK = {
    "attention_to_q": (("attention.to_q",), "diffusers"),
    "attention_to_k": (("attention.to_k",), "diffusers"),
    "attention_to_v": (("attention.to_v",), "diffusers"),
    "attention_qkv": (_QKV, "native"),
    "attention_to_out_0": (("attention.to_out.0",), "diffusers"),
    "attention_to_out": (("attention.to_out.0",), "diffusers"),
    "attention_out": (("attention.to_out.0",), "native"),
    "attention_norm_q": (("attention.norm_q",), "diffusers"),
    "attention_norm_k": (("attention.norm_k",), "diffusers"),
    "attention_q_norm": (("attention.norm_q",), "native"),
    "attention_k_norm": (("attention.norm_k",), "native"),
    "feed_forward_w1": (("feed_forward.w1",), "shared"),
    "feed_forward_w2": (("feed_forward.w2",), "shared"),
    "feed_forward_w3": (("feed_forward.w3",), "shared"),
    "attention_norm1": (("attention_norm1",), "shared"),
    "attention_norm2": (("attention_norm2",), "shared"),
    "ffn_norm1": (("ffn_norm1",), "shared"),
    "ffn_norm2": (("ffn_norm2",), "shared"),
    "adaLN_modulation_0": (("adaLN_modulation.0",), "shared"),
}
_DIT_TOP = {
    "all_x_embedder_2-1": ("all_x_embedder.2-1", "diffusers"),
    "x_embedder": ("all_x_embedder.2-1", "native"),
    "all_final_layer_2-1_linear": ("all_final_layer.2-1.linear", "diffusers"),
    "final_layer_linear": ("all_final_layer.2-1.linear", "native"),
    "all_final_layer_2-1_adaLN_modulation_1": ("all_final_layer.2-1.adaLN_modulation.1", "diffusers"),
    "final_layer_adaLN_modulation_1": ("all_final_layer.2-1.adaLN_modulation.1", "native"),
    "cap_embedder_0": ("cap_embedder.0", "shared"),
    "cap_embedder_1": ("cap_embedder.1", "shared"),
    "t_embedder_mlp_0": ("t_embedder.mlp.0", "shared"),
    "t_embedder_mlp_2": ("t_embedder.mlp.2", "shared"),
}
_DIT_PARAMS = {"x_pad_token", "cap_pad_token"}
_TE_BLOCK = {
    f"{a}_{b}": f"{a}.{b}"
    for a, names in (
        ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")),
        ("mlp", ("gate_proj", "up_proj", "down_proj")),
    )
    for b in names
} | {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm"}
_TE_TOP = {"embed_tokens": "embed_tokens", "norm": "norm"}

_DIT_BLOCK_RE = re.compile(r"^(layers|noise_refiner|context_refiner)_(\d+)_(.+)$")
_TE_BLOCK_RE = re.compile(r"^layers_(\d+)_(.+)$")


_COMFY_TE = re.compile(r"^text_encoders\.[A-Za-z0-9_]+\.(transformer\.)?")


def strip_prefixes(path: str) -> tuple[str, str | None, tuple[str, ...]]:
    """Remove known prefixes (they stack: `base_model.model.transformer.`). → (rest, component, styles)."""
    component: str | None = None
    styles: list[str] = []
    if m := _COMFY_TE.match(path):  # ComfyUI's generic `text_encoders.<clip name>.transformer.` keys
        path, component, styles = path[m.end() :], TEXT_ENCODER, ["comfyui"]
    changed = True
    while changed:
        changed = False
        for prefix, comp, style in _PREFIXES:
            if path.startswith(prefix) and (comp is None or component in (None, comp)):
                path, changed = path[len(prefix) :], True
                component = comp or component
                styles.append(style)
                break
    return path, component, tuple(styles)


def resolve(path: str) -> tuple[Module | None, tuple[str, ...]]:
    """The reference module a key's module path names, and the prefix styles seen (for the report)."""
    rest, component, styles = strip_prefixes(path)
    flat = rest.replace(".", "_").lstrip("_")
    if component in (None, DIT) and (found := _resolve_dit(flat)):
        return found, styles
    if component in (None, TEXT_ENCODER) and (found := _resolve_text_encoder(flat)):
        return found, styles
    return None, styles


def _resolve_dit(flat: str) -> Module | None:
    if m := _DIT_BLOCK_RE.match(flat):
        group, index, part = m.group(1), int(m.group(2)), m.group(3)
        if part not in _DIT_BLOCK:
            return None
        names, naming = _DIT_BLOCK[part]
        return Module(DIT, tuple(f"{group}.{index}.{n}" for n in names), naming, group, index, _dotted(part))
    if flat in _DIT_TOP:
        name, naming = _DIT_TOP[flat]
        return Module(DIT, (name,), naming, "top", None, name)
    if flat in _DIT_PARAMS:
        return Module(DIT, (flat,), "shared", "top", None, flat, is_param=True)
    return None


def _resolve_text_encoder(flat: str) -> Module | None:
    flat = flat.removeprefix("model_")
    if m := _TE_BLOCK_RE.match(flat):
        index, part = int(m.group(1)), m.group(2)
        if part not in _TE_BLOCK:
            return None
        return Module(
            TEXT_ENCODER, (f"layers.{index}.{_TE_BLOCK[part]}",), "hf", "layers", index, _TE_BLOCK[part]
        )
    if flat in _TE_TOP:
        return Module(TEXT_ENCODER, (_TE_TOP[flat],), "hf", "top", None, flat)
    return None


_PART_NAMES = {
    "attention_qkv": "attention.qkv",
    "attention_out": "attention.out",
    "attention_q_norm": "attention.q_norm",
    "attention_k_norm": "attention.k_norm",
}


def _dotted(part: str) -> str:
    """The block part as written in the file's naming (for the report)."""
    if part in _PART_NAMES:
        return _PART_NAMES[part]
    return _DIT_BLOCK[part][0][0]


# --- other model families, recognised by their module names ---

_FAMILIES = [
    (re.compile(r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]\d"), "a Flux LoRA"),
    (re.compile(r"(^|[._])(img_mlp|txt_mlp|img_mod|txt_mod)([._]|$)"), "a Qwen-Image LoRA"),
    (re.compile(r"(^|[._])(joint_blocks|context_block)[._]"), "a Stable Diffusion 3 LoRA"),
    (re.compile(r"(^|[._])transformer_blocks[._]\d+[._]attn[._]add_"), "an MMDiT (SD3/Flux) LoRA"),
    (re.compile(r"^lora_te2_|(^|[._])conditioner[._]|text_encoder_2[._]"), "an SDXL LoRA"),
    (
        re.compile(r"(^|[._])(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]"),
        "a Stable Diffusion 1.x/2.x/SDXL (UNet) LoRA",
    ),
    (
        re.compile(r"text_model[._]encoder[._]layers"),
        "a LoRA for a CLIP text encoder (Stable Diffusion family)",
    ),
    (re.compile(r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn)[._]"), "a Wan LoRA"),
]


def foreign_family(paths: list[str]) -> str | None:
    """Name the family these module paths belong to, when most of them are recognisably another model's.
    The most specific family with any evidence wins (an SDXL file also has SD-style UNet keys)."""
    hits = {label: sum(bool(rx.search(p)) for p in paths) for rx, label in _FAMILIES}
    recognised = sum(any(rx.search(p) for rx, _ in _FAMILIES) for p in paths)
    if recognised * 2 < len(paths):
        return None
    return next((label for _, label in _FAMILIES if hits[label]), None)
