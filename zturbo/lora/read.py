"""Read a LoRA file into patches on the reference layouts, with a report of everything it did.

Steps: open the header safely (pickles refused, corrupt files named) → split every key into module +
tensor role → resolve the module on the DiT or the text encoder → build one adapter per module (plus
bias patches) → drop exact duplicates (the "dot" format stores fused qkv next to to_q/k/v) → check the
shapes against the caller's model → report. Nothing is dropped silently: a key that is not used is in
`report.unmatched` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zturbo.checkpoints.reader import open_checkpoint
from zturbo.errors import ModelFileError
from zturbo.lora import keys as K
from zturbo.lora import report as R
from zturbo.lora.adapters import COLUMN, FP32_EPS, ROW, Adapter, Dora, Full, LoHa, LoKr, LoRA

Shapes = dict[str, tuple[int, ...]]

_KIND_ROLES = {
    "lora": ("down", "up"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "diff": ("diff",),
}


@dataclass(frozen=True, eq=False)
class WeightPatch:
    """One adapter on one or more parameters of a reference model (see the package docstring)."""

    component: str  # "dit" | "text_encoder"
    targets: tuple[str, ...]  # reference-layout parameter names; the delta's rows are split across them
    adapter: Adapter
    source_keys: tuple[str, ...]
    rows: tuple[int, ...]  # delta rows per target (from the model's shapes when given, else equal parts)


@dataclass
class LoraFile:
    path: Path
    patches: list[WeightPatch]
    report: R.LoraReport
    metadata: dict[str, str] = field(default_factory=dict)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.path.open("rb") as f:
            while block := f.read(16 << 20):
                digest.update(block)
        return digest.hexdigest()

    def short_hash(self) -> str:
        """First 10 hex digits of the file's sha256 (A1111/ComfyUI-style, for image metadata)."""
        return self.sha256()[:10]


@dataclass
class _Group:
    module: K.Module
    roles: dict[str, str] = field(default_factory=dict)  # role → key
    styles: tuple[str, ...] = ()
    suffix: str = ""


def read_lora(
    path: Path | str, *, dit_shapes: Shapes | None = None, text_encoder_shapes: Shapes | None = None
) -> LoraFile:
    """Detect the file's layout, map it onto the reference models and build its patches.

    `dit_shapes` / `text_encoder_shapes`: the target model's parameter shapes in the reference layouts;
    when given, every patch is checked against them and a mismatch is one ModelFileError.
    """
    path = Path(path)
    ckpt = open_checkpoint(path)
    if ckpt.format != "safetensors":
        raise ModelFileError(path, "is a GGUF file; LoRAs are read from .safetensors files")
    tensors: dict[str, torch.Tensor] = ckpt.load()  # type: ignore[assignment]
    unmatched: list[tuple[str, str]] = []
    notes: list[str] = []
    groups = _group_keys(tensors, unmatched, notes)
    if not groups:
        raise _not_for_z_image(path, list(tensors))
    peft = _PeftConfig.from_metadata(ckpt.metadata)
    patches: list[WeightPatch] = []
    for group in groups.values():
        patches += _build(path, group, tensors, peft, unmatched)
    shapes = {K.DIT: dit_shapes, K.TEXT_ENCODER: text_encoder_shapes}
    patches = [_with_rows(p, shapes[p.component]) for p in patches]
    patches = _drop_overlaps(patches, unmatched, notes)
    _check_shapes(path, patches, shapes)
    report = _report(path, ckpt.metadata, tensors, groups, patches, unmatched, notes, peft)
    return LoraFile(path=path, patches=patches, report=report, metadata=dict(ckpt.metadata))


# --- keys → groups ---


def _suffix_family(key: str, role: str) -> str:
    if ".default." in key:
        return "lora_A.default/lora_B.default"
    if key.endswith((".lora_A.weight", ".lora_B.weight", ".lora_B.bias")):
        return "lora_A/lora_B"
    if key.endswith((".lora.down.weight", ".lora.up.weight")):
        return "lora.down/lora.up"
    if role.startswith("lokr"):
        return "LoKr"
    if role.startswith("hada"):
        return "LoHa"
    if role in ("diff", "diff_b"):
        return "full diffs"
    return "lora_down/lora_up"


def _group_keys(tensors: dict, unmatched: list, notes: list) -> dict[tuple, _Group]:
    groups: dict[tuple, _Group] = {}
    redundant = 0
    for key in tensors:
        split = K.split_key(key)
        if split is None:
            what = K.unsupported_kind(key)
            unmatched.append(
                (key, f"{what}: not supported" if what else "not a LoRA tensor (unknown suffix)")
            )
            continue
        path, role = split
        module, styles = K.resolve(path)
        if module is None:
            unmatched.append((key, "names no module of Z-Image's DiT or its Qwen3 text encoder"))
            continue
        group = groups.setdefault((module.component, module.names), _Group(module))
        if role in group.roles:
            kept = group.roles[role]
            if torch.equal(tensors[kept], tensors[key]):
                redundant += 1
                continue
            unmatched.append((key, f"a second, different {role} for the module of {kept}"))
            continue
        group.roles[role] = key
        if role not in ("alpha", "dora_scale", "magnitude") and not group.suffix:
            # the first weight key decides how the module is named in the report
            group.module, group.styles, group.suffix = module, styles, _suffix_family(key, role)
    if redundant:
        notes.append(f"{redundant} keys were exact copies of others under a second spelling; used once")
    return groups


def _not_for_z_image(path: Path, names: list[str]) -> ModelFileError:
    modules = [split[0] for k in names if (split := K.split_key(k))]
    if not modules:
        hint = " It looks like a Z-Image model, not a LoRA." if "cap_embedder.1.weight" in names else ""
        return ModelFileError(
            path, f"holds no LoRA tensors (no lora_A/lora_down/lokr/hada/diff keys; first: {names[0]}).{hint}"
        )
    family = K.foreign_family(modules)
    if family:
        return ModelFileError(path, f"is {family}, not a Z-Image LoRA (keys like {names[0]})")
    return ModelFileError(
        path,
        f"has no key that matches Z-Image's diffusion model or its Qwen3 text encoder (first keys: "
        f"{', '.join(names[:3])}); it is probably a LoRA for another model",
    )


# --- PEFT metadata (diffusers' `lora_adapter_metadata`) ---


@dataclass
class _PeftConfig:
    configs: dict[str, dict]  # component → LoraConfig kwargs

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> _PeftConfig:
        raw = metadata.get("lora_adapter_metadata")
        if not raw:
            return cls({})
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return cls({})
        configs: dict[str, dict] = {}
        for key, value in data.items():
            head, _, rest = key.partition(".")
            if head in ("transformer", "text_encoder") and rest:
                configs.setdefault(K.DIT if head == "transformer" else K.TEXT_ENCODER, {})[rest] = value
            else:
                configs.setdefault(K.DIT, {})[key] = value
        return cls(configs)

    def alpha(self, component: str, module: str, rank: int) -> float | None:
        """The kohya-style alpha (scale = alpha/rank) PEFT would use for this module, None if unstated."""
        config = self.configs.get(component)
        if not config or "lora_alpha" not in config:
            return None
        alpha = float(config["lora_alpha"])
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = float(value)
                break
        if config.get("use_rslora"):
            return alpha * math.sqrt(rank)
        return alpha


# --- groups → adapters ---


def _build(path: Path, group: _Group, tensors: dict, peft: _PeftConfig, unmatched: list) -> list[WeightPatch]:
    roles, module = group.roles, group.module
    kinds = [k for k, rs in _KIND_ROLES.items() if any(r in roles for r in rs)]
    for extra in kinds[1:]:
        for role in _KIND_ROLES[extra]:
            if role in roles:
                unmatched.append(
                    (roles.pop(role), f"a second adapter ({extra}) on a module that has a {kinds[0]}")
                )
    kind = kinds[0] if kinds else None
    patches: list[WeightPatch] = []
    used: list[str] = []
    adapter = _weight_adapter(path, kind, group, tensors, peft, used, unmatched) if kind else None
    if adapter is not None:
        patches.append(_patch(module, "weight", adapter, used))
    if "up_bias" in roles:
        key = roles["up_bias"]
        if isinstance(adapter, LoRA):
            patches.append(_patch(module, "up_bias", Full(tensors[key], adapter.scale), [key]))
        else:
            unmatched.append((key, "a lora_B bias without its LoRA"))
    if "diff_b" in roles:
        patches.append(_patch(module, "diff_b", Full(tensors[roles["diff_b"]]), [roles["diff_b"]]))
    for role in ("alpha", "dora_scale", "magnitude"):
        if role in roles and roles[role] not in used:
            unmatched.append((roles[role], f"{role} without a LoRA/LoKr/LoHa on its module"))
    return patches


def _patch(module: K.Module, role: str, adapter: Adapter, keys: list[str]) -> WeightPatch:
    return WeightPatch(module.component, module.targets(role), adapter, tuple(keys), ())


def _weight_adapter(path, kind, group: _Group, tensors, peft, used: list, unmatched) -> Adapter | None:
    roles = group.roles
    get = {role: tensors[key] for role, key in roles.items()}
    alpha = _alpha(path, roles, get)
    adapter = _make_adapter(path, kind, group, get, alpha, peft, used, unmatched)
    if adapter is not None and "alpha" in roles and kind != "diff":
        used.append(roles["alpha"])
    return adapter


def _make_adapter(path, kind, group: _Group, get, alpha, peft, used: list, unmatched) -> Adapter | None:
    roles = group.roles
    if kind == "diff":
        used.append(roles["diff"])
        return Full(get["diff"])
    if kind == "lora":
        if "up" not in get or "down" not in get:
            have, missing = ("up", "down") if "up" in get else ("down", "up")
            unmatched.append((roles[have], f"lora_{have} without its lora_{missing}"))
            return None
        up, down = get["up"], get["down"]
        if up.dim() != 2 or down.dim() != 2:
            for r in ("up", "down"):
                unmatched.append(
                    (roles[r], f"a {up.dim()}-D LoRA factor (convolution LoRA): Z-Image has no such layer")
                )
            return None
        if up.shape[1] != down.shape[0]:
            raise ModelFileError(
                path,
                f"is corrupt: {roles['up']} has rank {up.shape[1]} but {roles['down']} has rank {down.shape[0]}",
            )
        if alpha is None:
            alpha = peft.alpha(group.module.component, group.module.names[0], down.shape[0])
        used += [roles["up"], roles["down"]]
        return LoRA(up, down, alpha, _dora(path, roles, get, up.shape[0], down.shape[1], used))
    if kind == "lokr":
        return _lokr(path, roles, get, alpha, used, unmatched)
    return _loha(path, roles, get, alpha, used, unmatched)


def _alpha(path, roles, get) -> float | None:
    if "alpha" not in get:
        return None
    value = get["alpha"]
    if value.numel() != 1:
        raise ModelFileError(
            path, f"is corrupt: {roles['alpha']} should be one number, has shape {tuple(value.shape)}"
        )
    return float(value.float().item())


def _dora(path, roles, get, rows: int, cols: int, used: list) -> Dora | None:
    if "magnitude" in get:  # PEFT: one per output row, no eps
        m, key, axis, eps = get["magnitude"], roles["magnitude"], ROW, 0.0
    elif "dora_scale" in get:  # LyCORIS/kohya: (out, 1) per row or (1, in) per column (ComfyUI's rule)
        m, key, eps = get["dora_scale"], roles["dora_scale"], FP32_EPS
        axis = ROW if m.shape[0] == rows else COLUMN
    else:
        return None
    if m.numel() != (rows if axis == ROW else cols):
        raise ModelFileError(
            path,
            f"is corrupt: {key} has shape {tuple(m.shape)}, expected {rows} (per row) or {cols} (per column)",
        )
    used.append(key)
    return Dora(m, axis, eps)


def _lokr(path, roles, get, alpha, used, unmatched) -> Adapter | None:
    w1_ok = "lokr_w1" in get or ("lokr_w1_a" in get and "lokr_w1_b" in get)
    w2_ok = "lokr_w2" in get or ("lokr_w2_a" in get and "lokr_w2_b" in get)
    present = [r for r in _KIND_ROLES["lokr"] if r in roles]
    if not (w1_ok and w2_ok):
        unmatched += [
            (roles[r], "incomplete LoKr (needs w1 or w1_a/w1_b, and w2 or w2_a/w2_b)") for r in present
        ]
        return None
    used += [roles[r] for r in present]
    args = {r.removeprefix("lokr_"): get[r] for r in present}
    adapter = LoKr(**args, alpha=alpha)
    rows, cols = adapter.shape
    return LoKr(**args, alpha=alpha, dora=_dora(path, roles, get, rows, cols, used))


def _loha(path, roles, get, alpha, used, unmatched) -> Adapter | None:
    need = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    present = [r for r in _KIND_ROLES["loha"] if r in roles]
    if not all(r in get for r in need) or (("hada_t1" in get) != ("hada_t2" in get)):
        unmatched += [(roles[r], "incomplete LoHa (needs hada_w1_a/b and hada_w2_a/b)") for r in present]
        return None
    used += [roles[r] for r in present]
    args = {r.removeprefix("hada_"): get[r] for r in present}
    adapter = LoHa(**args, alpha=alpha)
    rows, cols = adapter.shape
    return LoHa(**args, alpha=alpha, dora=_dora(path, roles, get, rows, cols, used))


# --- rows, overlaps, shapes ---


def _with_rows(patch: WeightPatch, shapes: Shapes | None) -> WeightPatch:
    total = patch.adapter.shape[0] if patch.adapter.shape else 0
    if shapes is not None and all(t in shapes for t in patch.targets):
        rows = tuple(shapes[t][0] if shapes[t] else 1 for t in patch.targets)
    else:
        rows = (total // len(patch.targets),) * len(patch.targets)
    return WeightPatch(patch.component, patch.targets, patch.adapter, patch.source_keys, rows)


def _drop_overlaps(patches: list[WeightPatch], unmatched: list, notes: list) -> list[WeightPatch]:
    """A fused patch (native qkv) on parameters that split patches (to_q/k/v) also cover: keep the split
    ones (diffusers' rule for the "dot" format); the fused one is a redundant copy when its delta equals
    theirs, and is reported as not used otherwise."""
    by_target: dict[tuple[str, str], WeightPatch] = {}
    for p in patches:
        if len(p.targets) == 1:
            by_target.setdefault((p.component, p.targets[0]), p)
    kept, redundant = [], 0
    for p in patches:
        covered = [by_target.get((p.component, t)) for t in p.targets] if len(p.targets) > 1 else []
        if not any(covered):
            kept.append(p)
            continue
        if all(covered) and _same_delta(p, covered):  # type: ignore[arg-type]
            redundant += 1
            continue
        clash = next(c for c in covered if c is not None)
        reason = (
            f"overlaps {clash.source_keys[0]} (same parameter, different values); the split patch is used"
        )
        unmatched += [(k, reason) for k in p.source_keys]
    if redundant:
        notes.append(f"{redundant} fused qkv patches duplicate their to_q/to_k/to_v patches; used once")
    return kept


def _same_delta(fused: WeightPatch, parts: list[WeightPatch]) -> bool:
    try:
        whole = fused.adapter.delta()
        split = torch.cat([p.adapter.delta() for p in parts], dim=0)
    except RuntimeError:
        return False
    return whole.shape == split.shape and torch.allclose(whole, split, rtol=1e-3, atol=1e-6)


def _check_shapes(path: Path, patches: list[WeightPatch], shapes: dict[str, Shapes | None]) -> None:
    problems = []
    for p in patches:
        model = shapes[p.component]
        if model is None:
            continue
        missing = [t for t in p.targets if t not in model]
        if missing:
            problems.append(f"{p.source_keys[0]} patches {missing[0]}, which this model does not have")
            continue
        expected = _expected_shape([model[t] for t in p.targets])
        got = tuple(p.adapter.shape)
        if got != expected and not (isinstance(p.adapter, Full) and math.prod(got) == math.prod(expected)):
            problems.append(
                f"{p.source_keys[0]} gives a {_fmt(got)} change for {', '.join(p.targets)} {_fmt(expected)}"
            )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelFileError(
            path,
            "does not fit this model: "
            + "; ".join(problems[:3])
            + more
            + ". It was made for a model of another "
            "size or family (Lumina 2 LoRAs, for one, use Z-Image's key names).",
        )


def _expected_shape(parts: list[tuple[int, ...]]) -> tuple[int, ...]:
    if len(parts) == 1:
        return tuple(parts[0])
    return (sum(s[0] for s in parts), *parts[0][1:])


def _fmt(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


# --- report ---


def _report(path, metadata, tensors, groups, patches, unmatched, notes, peft) -> R.LoraReport:
    layouts: dict[tuple, set[str]] = {}
    counts: dict[tuple, int] = {}
    for g in groups.values():
        if g.suffix:
            key = (R.main_style(g.styles), g.suffix, g.module.component)
            layouts.setdefault(key, set()).add(g.module.naming)
            counts[key] = counts.get(key, 0) + 1
    labels = [
        R.describe_layout(*key[:1], layouts[key], *key[1:])
        for key in sorted(counts, key=lambda k: -counts[k])
    ]
    fmt = "; ".join(labels) or "unknown"
    weights = [p for p in patches if p.targets[0].endswith(".weight") or len(p.targets[0].split(".")) == 1]
    report = R.LoraReport(path=path, format=fmt, producer=R.describe_producer(metadata, fmt))
    report.adapters = R.count(p.adapter.label for p in patches)
    report.ranks = R.count(p.adapter.rank for p in weights if p.adapter.rank is not None)
    report.alphas = R.count(R.alpha_label(p.adapter.alpha) for p in weights if p.adapter.kind != "diff")
    used_keys = {k for p in patches for k in p.source_keys}
    for component in (K.DIT, K.TEXT_ENCODER):
        count = sum(p.component == component for p in patches)
        if count:
            report.patch_counts[component] = count
            live = [
                g.module
                for g in groups.values()
                if g.module.component == component and used_keys & set(g.roles.values())
            ]
            report.coverage[component] = R.coverage_lines(live)
    report.total_keys = len(tensors)
    report.unmatched = sorted(unmatched)
    report.matched_keys = report.total_keys - len(report.unmatched)
    report.notes = list(notes)
    if peft.configs:
        report.notes.append(
            "alpha/rank for lora_A/lora_B modules from the file's lora_adapter_metadata (PEFT)"
        )
    dora = {p.adapter.dora.axis for p in patches if p.adapter.dora is not None}
    if dora:
        report.notes.append(
            f"DoRA normalised per {' and '.join(sorted(dora))}; strength as ComfyUI defines it"
        )
    return report
