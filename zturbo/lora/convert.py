"""Write a LoRA in another layout: ComfyUI's native one or diffusers/PEFT's, exactly or not at all.

- `comfy`: `diffusion_model.<original Z-Image names>.lora_down/lora_up/alpha` (LoKr, LoHa, `dora_scale`,
  `.diff`, `.diff_b` as ComfyUI reads them); text-encoder LoRAs as `lora_te_<Qwen3 names>`. Plain LoRAs on
  to_q/to_k/to_v of one block become one `attention.qkv` LoRA of rank r_q+r_k+r_v: down = [down_q;
  down_k; down_v], up block-diagonal, which is exact (a missing projection is a zero block). Projections
  whose adapter cannot be fused (LoKr, DoRA) keep their diffusers names, which ComfyUI maps onto slices
  of qkv.
- `diffusers`: `transformer.<diffusers names>.lora_A/lora_B` with PEFT's `lora_adapter_metadata` (r,
  lora_alpha, rank/alpha patterns) so the scale needs no rounding; a fused qkv LoRA is split into
  to_q/to_k/to_v (shared down, the rows of up), dropping rank components that are zero in a
  projection's rows (exact; undoes the block-diagonal fusion). Refused, with the reason: LoKr and LoHa
  (diffusers' Z-Image loader takes LoKr only in PEFT's own factorisation, LoHa not at all), full
  differences and bias patches (PEFT has none per module), per-column DoRA (PEFT's is per row).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from zturbo.errors import InputError
from zturbo.lora.adapters import COLUMN, ROW, Dora, Full, LoHa, LoKr, LoRA
from zturbo.lora.keys import DIT, TEXT_ENCODER
from zturbo.lora.read import LoraFile, WeightPatch

TARGETS = ("comfy", "diffusers")
_QKV_RE = re.compile(r"^(.*)\.attention\.to_([qkv])\.weight$")
_NATIVE = [
    (re.compile(r"^all_x_embedder\.2-1$"), "x_embedder"),
    (re.compile(r"^all_final_layer\.2-1\."), "final_layer."),
    (re.compile(r"\.attention\.to_out\.0$"), ".attention.out"),
    (re.compile(r"\.attention\.norm_q$"), ".attention.q_norm"),
    (re.compile(r"\.attention\.norm_k$"), ".attention.k_norm"),
]


@dataclass
class Converted:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (first source key, why)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path), metadata=self.metadata)
        return path


def convert_lora(lora: LoraFile, to: str) -> Converted:
    if to not in TARGETS:
        raise InputError(f"unknown LoRA layout {to!r}; choose one of {', '.join(TARGETS)}")
    out = _to_comfy(lora) if to == "comfy" else _to_diffusers(lora)
    kept = {k: v for k, v in lora.metadata.items() if k != "lora_adapter_metadata"}
    out.metadata = {**kept, **out.metadata, "zturbo_converted_from": lora.report.format}
    return out


def _module(target: str) -> str:
    return target.removesuffix(".weight").removesuffix(".bias")


# --- ComfyUI ---


def _to_comfy(lora: LoraFile) -> Converted:
    out = Converted({}, {"format": "pt"})
    fused, rest = _fuse_qkv(lora.patches, out.notes)
    for stem, adapter, keys in fused:
        _write_comfy(out, stem, adapter, "weight", keys)
    for p in rest:
        role = "bias" if p.targets[0].endswith(".bias") else "weight"
        if p.component == TEXT_ENCODER:
            stem = "lora_te_" + _module(p.targets[0]).replace(".", "_")
        elif len(p.targets) == 3 and p.targets[0].endswith(".attention.to_q.weight"):
            stem = "diffusion_model." + p.targets[0].removesuffix("to_q.weight") + "qkv"
        elif len(p.targets) == 1:
            stem = "diffusion_model." + _native(_module(p.targets[0]))
        else:
            out.refused.append((p.source_keys[0], f"no ComfyUI name covers {', '.join(p.targets)}"))
            continue
        _write_comfy(out, stem, p.adapter, role, p.source_keys)
    if any(isinstance(p.adapter.dora, Dora) and p.adapter.dora.axis == ROW for p in lora.patches):
        out.notes.append(
            "per-row DoRA written as dora_scale (out, 1): zturbo, PEFT and LyCORIS normalise by the patched "
            "weight; ComfyUI's current release by the base weight (its PR #15458), so ComfyUI differs there"
        )
    return out


def _native(module: str) -> str:
    for rx, new in _NATIVE:
        module = rx.sub(new, module)
    return module


def _fuse_qkv(patches: list[WeightPatch], notes: list[str]):
    """Plain LoRAs on a block's to_q/to_k/to_v → one qkv LoRA (block-diagonal up). → (fused, the rest)."""
    blocks: dict[str, dict[str, WeightPatch]] = {}
    for p in patches:
        m = _QKV_RE.match(p.targets[0]) if len(p.targets) == 1 else None
        if m and p.component == DIT and isinstance(p.adapter, LoRA) and p.adapter.dora is None:
            blocks.setdefault(m.group(1), {})[m.group(2)] = p
    fused: list[tuple[str, LoRA, tuple[str, ...]]] = []
    used: set[int] = set()
    folded = 0
    for block, parts in blocks.items():
        present = [parts[c] for c in "qkv" if c in parts]
        rows = next(iter(present)).rows[0]
        scales = [p.adapter.scale for p in present]
        ref = scales[0]
        same = all(s == ref for s in scales)
        dtype = present[0].adapter.up.dtype  # type: ignore[union-attr]
        if not same or any(p.adapter.up.dtype != dtype for p in present):  # type: ignore[union-attr]
            dtype = torch.float32
        folded += not same
        ups: list[torch.Tensor | None] = []
        downs: list[torch.Tensor] = []
        for c in "qkv":
            if c not in parts:
                ups.append(None)
                continue
            a: LoRA = parts[c].adapter  # type: ignore[assignment]
            up = a.up if same else a.up.float() * (a.scale / ref)
            ups.append(up.to(dtype))
            downs.append(a.down.to(dtype))
        rank = sum(d.shape[0] for d in downs)
        up = torch.zeros(rows * 3, rank, dtype=dtype)
        col = 0
        for i, u in enumerate(ups):
            if u is not None:
                up[i * rows : (i + 1) * rows, col : col + u.shape[1]] = u
                col += u.shape[1]
        alpha = None if all(p.adapter.alpha is None for p in present) and same and ref == 1.0 else ref * rank
        keys = tuple(k for p in present for k in p.source_keys)
        fused.append((f"diffusion_model.{block}.attention.qkv", LoRA(up, torch.cat(downs), alpha), keys))
        used.update(id(p) for p in present)
    if fused:
        notes.append(f"{len(fused)} blocks' to_q/to_k/to_v LoRAs fused into native qkv LoRAs (exact)")
    if folded:
        notes.append(f"{folded} of them had different scales per projection: folded into lora_up in fp32")
    return fused, [p for p in patches if id(p) not in used]


def _write_comfy(out: Converted, stem: str, adapter, role: str, keys) -> None:
    t = out.tensors
    if isinstance(adapter, Full):
        diff = adapter.diff if adapter.factor == 1.0 else adapter.diff.float() * adapter.factor
        t[f"{stem}.{'diff_b' if role == 'bias' else 'diff'}"] = diff
        return
    if isinstance(adapter, LoRA):
        t[f"{stem}.lora_down.weight"] = adapter.down
        t[f"{stem}.lora_up.weight"] = adapter.up
    elif isinstance(adapter, LoKr):
        for name in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2"):
            if getattr(adapter, name) is not None:
                t[f"{stem}.lokr_{name}"] = getattr(adapter, name)
    elif isinstance(adapter, LoHa):
        for name in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2"):
            if getattr(adapter, name) is not None:
                t[f"{stem}.hada_{name}"] = getattr(adapter, name)
    if adapter.alpha is not None:
        t[f"{stem}.alpha"] = torch.tensor(float(adapter.alpha))
    if adapter.dora is not None:
        rows, cols = adapter.shape
        shape = (rows, 1) if adapter.dora.axis == ROW else (1, cols)
        t[f"{stem}.dora_scale"] = adapter.dora.magnitude.reshape(shape)


# --- diffusers / PEFT ---


def _to_diffusers(lora: LoraFile) -> Converted:
    out = Converted({}, {"format": "pt"})
    modules: dict[str, dict[str, tuple[LoRA, str]]] = {DIT: {}, TEXT_ENCODER: {}}
    for p in lora.patches:
        why = _diffusers_refusal(p)
        if why:
            out.refused.append((p.source_keys[0], why))
            continue
        for target, adapter in _split_rows(p):
            modules[p.component][_module(target)] = (adapter, p.source_keys[0])
    dora = {c: {m for m, (a, _) in mods.items() if a.dora is not None} for c, mods in modules.items()}
    configs: dict[str, object] = {}
    for component, mods in modules.items():
        if dora[component] and len(dora[component]) != len(mods):
            for m in sorted(dora[component]):
                out.refused.append(
                    (
                        mods.pop(m)[1],
                        "PEFT applies DoRA to all modules of an adapter or none; this file mixes them",
                    )
                )
        if not mods:
            continue
        prefix = "transformer" if component == DIT else "text_encoder"
        for module, (a, _) in mods.items():
            out.tensors[f"{prefix}.{module}.lora_A.weight"] = a.down
            out.tensors[f"{prefix}.{module}.lora_B.weight"] = a.up
            if a.dora is not None:
                out.tensors[f"{prefix}.{module}.lora_magnitude_vector"] = a.dora.magnitude.reshape(-1)
        configs |= {f"{prefix}.{k}": v for k, v in _peft_config({m: a for m, (a, _) in mods.items()}).items()}
    if modules[TEXT_ENCODER]:
        out.notes.append(
            "text-encoder LoRA written as text_encoder.* keys: diffusers' ZImagePipeline loads only the "
            "transformer's LoRA; zturbo and InvokeAI read these"
        )
    if any(a.dora is not None and a.dora.eps for mods in modules.values() for a, _ in mods.values()):
        out.notes.append("dora_scale written as PEFT lora_magnitude_vector (PEFT adds no eps to the norm)")
    out.metadata["lora_adapter_metadata"] = json.dumps(configs, sort_keys=True)
    return out


def _diffusers_refusal(p: WeightPatch) -> str | None:
    a = p.adapter
    if isinstance(a, LoKr):
        return "LoKr: diffusers' Z-Image loader takes LoKr only in PEFT's own factorisation; use --to comfy"
    if isinstance(a, LoHa):
        return "LoHa: diffusers cannot load LoHa; use --to comfy"
    if isinstance(a, Full):
        what = "a bias patch" if p.targets[0].endswith(".bias") else "a full weight difference"
        return f"{what}: PEFT LoRA files have no place for it; use --to comfy"
    if a.dora is not None and a.dora.axis == COLUMN:
        return "per-column DoRA (dora_scale (1, in)): PEFT's DoRA is per output row; use --to comfy"
    return None


def _split_rows(p: WeightPatch) -> list[tuple[str, LoRA]]:
    a: LoRA = p.adapter  # type: ignore[assignment]
    if len(p.targets) == 1:
        return [(p.targets[0], a)]
    out, start = [], 0
    for target, rows in zip(p.targets, p.rows, strict=True):
        up = a.up[start : start + rows]
        keep = up.abs().sum(dim=0) != 0
        if not bool(keep.any()):
            if a.dora is None:  # a zero block (a projection the fused LoRA did not train): no patch at all
                start += rows
                continue
            keep = torch.ones_like(keep)
        rank = int(keep.sum())
        alpha = None if a.alpha is None and rank == a.rank else a.scale * rank
        dora = None
        if a.dora is not None:
            dora = Dora(a.dora.magnitude.reshape(-1)[start : start + rows], ROW, a.dora.eps)
        out.append((target, LoRA(up[:, keep], a.down[keep], alpha, dora)))
        start += rows
    return out


def _peft_config(mods: dict[str, LoRA]) -> dict:
    ranks = {m: a.rank for m, a in mods.items()}
    alphas = {m: (a.alpha if a.alpha is not None else float(a.rank)) for m, a in mods.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    lora_alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": lora_alpha,
        "rank_pattern": {"^" + re.escape(m): v for m, v in ranks.items() if v != r},
        "alpha_pattern": {"^" + re.escape(m): v for m, v in alphas.items() if v != lora_alpha},
        "target_modules": sorted(mods),
        "use_dora": any(a.dora is not None for a in mods.values()),
        "lora_bias": False,
    }
