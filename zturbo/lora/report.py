"""What a LoRA load did, for people: format, producer, ranks, what it patches, and every key it skipped."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from zturbo.lora.keys import DIT, TEXT_ENCODER, Module

COMPONENT_LABELS = {DIT: "diffusion model", TEXT_ENCODER: "text encoder"}

_SHORT = {
    "attention.to_q": ("attention", "q"),
    "attention.to_k": ("attention", "k"),
    "attention.to_v": ("attention", "v"),
    "attention.qkv": ("attention", "qkv (fused)"),
    "attention.to_out.0": ("attention", "out"),
    "attention.out": ("attention", "out"),
    "feed_forward.w1": ("ffn", "w1"),
    "feed_forward.w2": ("ffn", "w2"),
    "feed_forward.w3": ("ffn", "w3"),
    "adaLN_modulation.0": ("adaLN", "modulation"),
    "self_attn.q_proj": ("self_attn", "q"),
    "self_attn.k_proj": ("self_attn", "k"),
    "self_attn.v_proj": ("self_attn", "v"),
    "self_attn.o_proj": ("self_attn", "o"),
    "mlp.gate_proj": ("mlp", "gate"),
    "mlp.up_proj": ("mlp", "up"),
    "mlp.down_proj": ("mlp", "down"),
}
_GROUP_NAMES = {"layers": "layers", "noise_refiner": "noise_refiner", "context_refiner": "context_refiner"}


@dataclass
class LoraReport:
    """Everything `zturbo lora inspect` prints and every load logs."""

    path: Path
    format: str
    producer: str
    adapters: dict[str, int] = field(default_factory=dict)  # "lora", "lora+dora", "lokr", "diff", ...
    ranks: dict[int, int] = field(default_factory=dict)
    alphas: dict[str, int] = field(default_factory=dict)  # "16" / "none (scale 1)" → patch count
    coverage: dict[str, list[str]] = field(default_factory=dict)  # component → lines
    patch_counts: dict[str, int] = field(default_factory=dict)  # component → patches
    matched_keys: int = 0
    total_keys: int = 0
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.path.name}: {self.format}", f"producer: {self.producer}"]
        if self.adapters:
            out.append("adapters: " + ", ".join(f"{n} {kind}" for kind, n in _by_count(self.adapters)))
        if self.ranks:
            out.append(
                "rank: "
                + ", ".join(f"{r} ({n})" if len(self.ranks) > 1 else str(r) for r, n in _by_count(self.ranks))
            )
        if self.alphas:
            out.append(
                "alpha: "
                + ", ".join(f"{a} ({n})" if len(self.alphas) > 1 else a for a, n in _by_count(self.alphas))
            )
        for component, label in COMPONENT_LABELS.items():
            if component in self.patch_counts:
                out.append(f"{label}: {self.patch_counts[component]} patches")
                out.extend(f"  {line}" for line in self.coverage.get(component, []))
        skipped = len(self.unmatched)
        out.append(
            f"keys: {self.matched_keys} of {self.total_keys} used"
            + (f", {skipped} not used:" if skipped else " (all)")
        )
        out.extend(f"  {key}: {why}" for key, why in self.unmatched)
        out.extend(f"note: {note}" for note in self.notes)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def summary(self) -> str:
        """One line for logs: format, patches, unused keys."""
        parts = [f"{COMPONENT_LABELS[c]} {n}" for c, n in self.patch_counts.items()]
        unused = f", {len(self.unmatched)} keys not used" if self.unmatched else ""
        return f"{self.path.name}: {self.format}; patches: {', '.join(parts) or 'none'}{unused}"


def _by_count(counts: dict) -> list:
    return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))


def coverage_lines(modules: list[Module]) -> list[str]:
    """E.g. "30 layers (0–29) × attention q/k/v/out, ffn w1/w2/w3" and "all_x_embedder.2-1"."""
    by_group: dict[str, dict[str, set[int]]] = {}
    top: list[str] = []
    for module in modules:
        if module.index is None:
            top.append(module.part)
            continue
        by_group.setdefault(module.group, {}).setdefault(module.part, set()).add(module.index)
    lines = []
    order = list(_GROUP_NAMES)
    for group, parts in sorted(by_group.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        by_indices: dict[tuple[int, ...], list[str]] = {}
        for part, index_set in parts.items():
            by_indices.setdefault(tuple(sorted(index_set)), []).append(part)
        for indices, names in sorted(by_indices.items(), key=lambda kv: -len(kv[0])):
            lines.append(
                f"{len(indices)} {_GROUP_NAMES.get(group, group)} ({_ranges(indices)}) × {_parts(names)}"
            )
    if top:
        lines.append(", ".join(sorted(set(top))))
    return lines


def _ranges(indices: tuple[int, ...]) -> str:
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _parts(names: list[str]) -> str:
    grouped: dict[str, list[str]] = {}
    order = {name: i for i, name in enumerate(_SHORT)}
    for name in sorted(names, key=lambda n: order.get(n, len(order))):
        head, tail = _SHORT.get(name, (name, ""))
        grouped.setdefault(head, []).append(tail)
    return ", ".join(f"{head} {'/'.join(t for t in tails if t)}".strip() for head, tails in grouped.items())


# --- format and producer labels ---


_NAMINGS = {"native": "original Z-Image", "diffusers": "diffusers", "hf": "Qwen3"}


def main_style(styles: tuple[str, ...]) -> str:
    return next((s for s in styles if s != "peft"), "peft" if "peft" in styles else "bare")


def describe_layout(style: str, namings: set[str], suffix: str, component: str) -> str:
    """A human label for one key style, e.g. "kohya/musubi-tuner (lora_unet_ + underscored diffusers names)".
    A ComfyUI file mixes namings (native qkv/out next to to_q on another block): both are named."""
    specific = (namings - {"shared"}) or {"diffusers"}  # ffn/adaLN/embedder names are the same in both
    names = " and ".join(_NAMINGS[n] for n in sorted(specific, key=list(_NAMINGS).index)) + " names"
    naming = "diffusers" if "diffusers" in specific else next(iter(specific))
    if component == TEXT_ENCODER:
        prefix = {
            "kohya": "lora_te_",
            "diffusers": "text_encoder.",
            "comfyui": "text_encoders.<name>.transformer.",
            "invokeai": "lora_qwen3-",
            "peft": "base_model.model.",
        }.get(style, "bare names")
        return f"text encoder: {prefix} + {suffix}"
    if suffix == "lora.down/lora.up":
        return f"dot format ({names}, lora.down/lora.up)"
    labels = {
        "kohya": f"kohya/musubi-tuner (lora_unet_ + underscored {names}, {suffix})",
        "lycoris": f"SimpleTuner LyCORIS (lycoris_ + underscored {names}, {suffix})",
        "onetrainer": f"OneTrainer (lora_transformer_ + underscored {names}, {suffix})",
        "invokeai": f"InvokeAI (lora_transformer- + {names}, {suffix})",
        "diffusers": f"diffusers/PEFT (transformer. + {names}, {suffix})",
        "peft": f"PEFT (base_model.model. + {names}, {suffix})",
        "comfyui": f"ComfyUI (model.diffusion_model. + {names}, {suffix})",
        "bare": f"bare {names} ({suffix})",
    }
    if style == "diffusion_model":
        who = "ai-toolkit" if naming == "diffusers" and suffix.startswith("lora_A") else "ComfyUI"
        if suffix in ("LoKr", "LoHa") and naming == "diffusers":
            who = "ai-toolkit/LyCORIS"
        return f"{who} (diffusion_model. + {names}, {suffix})"
    if style == "bare" and suffix == "lora_A.default/lora_B.default":
        return f"DiffSynth-Studio (bare {names}, {suffix})"
    return labels.get(style, f"{style} ({names}, {suffix})")


def describe_producer(metadata: dict[str, str], fmt: str) -> str:
    """Who wrote the file, from its metadata when it says, else from the key layout."""
    meta = {k: str(v) for k, v in metadata.items()}
    blob = " ".join(meta.values()).lower()
    if "ss_network_module" in meta or any(k.startswith("ss_") for k in meta):
        module = meta.get("ss_network_module", "")
        who = "musubi-tuner" if "zimage" in module or "musubi" in blob else "kohya sd-scripts / musubi-tuner"
        return f"{who} (metadata ss_network_module={module or '?'})"
    if "ai-toolkit" in blob or "ai_toolkit" in blob:
        return "ai-toolkit (metadata)"
    if "lycoris" in blob:
        return "LyCORIS (metadata)"
    if "lora_adapter_metadata" in meta:
        return "diffusers/PEFT (lora_adapter_metadata)"
    if "modelspec.architecture" in meta:
        return f"unknown trainer (modelspec.architecture={meta['modelspec.architecture']})"
    return f"not stated in the file; key layout suggests {fmt.split(' (')[0]}"


def alpha_label(alpha: float | None) -> str:
    if alpha is None:
        return "none (scale 1)"
    return json.dumps(int(alpha) if float(alpha).is_integer() else round(alpha, 6))


def count(values) -> dict:
    return dict(Counter(values))
