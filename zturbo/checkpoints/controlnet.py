"""Z-Image Fun ControlNet Union files: recognised by their tensors, mapped to diffusers' names, loaded.

Layouts read (all detected by content, never by file name):
- the released single files (alibaba-pai, VideoX-Fun's names = diffusers' `ZImageControlNetModel`
  names: `control_layers.N.attention.to_q.weight`, `control_all_x_embedder.2-1.weight`, ...);
- the same with ComfyUI's fused attention names (`attention.qkv`, `attention.out`, `q_norm`/`k_norm`),
  as ComfyUI converts them in memory;
- a diffusers folder (`config.json` with `_class_name: ZImageControlNetModel` + safetensors); the
  diffusers conversion of 2.0 drops its unused `control_noise_refiner`.

Signatures (after mapping; `spec_from_tensors`): control_in_dim from `control_all_x_embedder.2-1.weight`
[dim, 4·C] (C = 16 for 1.0, 33 for 2.x); the number of `control_layers.N` blocks (6 / 15 / 3); the
refiner from `control_noise_refiner.0`: no projections → 1.0's plain refiner; projections all zero (or
no refiner at all, 33 channels) → 2.0; trained projections → 2.1 / 2.1 Lite (Tile 2.1, 2602-8steps and
the base model's 2.1 share these layouts).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from zturbo.checkpoints.assign import assign_state_dict, build_empty
from zturbo.checkpoints.detect import Detection, detect
from zturbo.checkpoints.fp8 import split_fp8_state_dict
from zturbo.checkpoints.reader import Checkpoint, open_checkpoint
from zturbo.errors import ModelFileError
from zturbo.models.configs import ConfigError, count_indexed
from zturbo.models.controlnet import CONTROL_LAYERS, CONTROL_REFINER, PLAIN, ControlNetSpec

CONTROLNET = "controlnet"
MARKER = "control_all_x_embedder.2-1.weight"
MAIN_LAYERS = 30  # the released Z-Image models; places are re-derived for the DiT a ControlNet meets

RELEASES = {
    (16, PLAIN, 6): "1.0",
    (33, CONTROL_LAYERS, 15): "2.0",
    (33, CONTROL_REFINER, 15): "2.1",
    (33, CONTROL_REFINER, 3): "2.1 Lite",
}

# Model patches and ControlNets for other models that people drop into models/model_patches or
# models/controlnet: named, so the error says what the file is.
FOREIGN = [
    (
        r"^controlnet_blocks\.0\.y_rms\.weight$",
        "a Qwen-Image DiffSynth blockwise ControlNet (a Qwen-Image patch)",
    ),
    (r"^feature_embedder\.mid_layer_norm\.bias$", "a USO style projector (a Flux model patch)"),
    (r"^audio_proj\.proj1\.weight$", "a MultiTalk audio patch (for Wan)"),
    (r"(^|\.)controlnet_x_embedder\.weight$", "a Flux ControlNet"),
    (r"(^|\.)controlnet_single_blocks\.0\.", "a Flux ControlNet"),
    (r"(^|\.)input_hint_block\.0\.weight$", "a Stable Diffusion (SD1.5/SDXL) ControlNet"),
    (
        r"(^|\.)controlnet_cond_embedding\.conv_in\.weight$",
        "a diffusers Stable Diffusion (SD1.5/SDXL) ControlNet",
    ),
    (r"(^|\.)controlnet_blocks\.0\.weight$", "a ControlNet for another model (MMDiT / Qwen-Image family)"),
]

_COMFY_RENAMES = [
    (re.compile(r"\.attention\.out\."), ".attention.to_out.0."),
    (re.compile(r"\.attention\.q_norm\."), ".attention.norm_q."),
    (re.compile(r"\.attention\.k_norm\."), ".attention.norm_k."),
]


@dataclass(frozen=True)
class ControlNetFile:
    """What a ControlNet file holds: its spec, layout and the state dict under diffusers' names."""

    spec: ControlNetSpec
    layout: str  # "original" | "comfyui" | "diffusers"
    state_dict: dict[str, object]
    unused: tuple[str, ...] = ()  # tensors the release carries but never runs (2.0's zero refiner)

    @property
    def description(self) -> str:
        return f"Z-Image Fun ControlNet Union {self.spec.release} ({self.layout} layout)"


def is_controlnet(keys: set[str]) -> bool:
    return MARKER in keys or any(k.endswith("." + MARKER) for k in keys)


def what_is(ckpt: Checkpoint) -> str:
    """A short description of a file that is not a Z-Image ControlNet (for the error message)."""
    keys = set(ckpt.tensors)
    for pattern, label in FOREIGN:
        rx = re.compile(pattern)
        if any(rx.search(k) for k in keys):
            return label
    found: Detection = detect(ckpt)
    if found.kind is not None:
        return f"a {found.description}, not a ControlNet (it belongs in the {found.kind} folder)"
    return found.description


def _files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in (".safetensors", ".sft"))
        if not files:
            raise ModelFileError(source, "is a folder without .safetensors files")
        return files
    return [source]


def read_controlnet(source: Path) -> ControlNetFile:
    """Read a ControlNet file or diffusers folder; refuse anything else, saying what it is."""
    state: dict[str, object] = {}
    for file in _files(source):
        ckpt = open_checkpoint(file)
        if not is_controlnet(set(ckpt.tensors)):
            raise ModelFileError(
                file, f"is {what_is(ckpt)}, not a Z-Image Fun ControlNet (alibaba-pai Controlnet-Union)"
            )
        tensors = ckpt.load()
        plain, fp8 = split_fp8_state_dict(tensors, metadata=ckpt.metadata, source=file)  # type: ignore[arg-type]
        state.update({**plain, **fp8})
    prefix = next((k[: -len(MARKER)] for k in state if k.endswith(MARKER)), "")
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    layout = "diffusers" if source.is_dir() else "original"
    if any(k.endswith(".attention.qkv.weight") for k in state):
        layout, state = "comfyui", _from_comfy(state)
    try:
        spec = spec_from_tensors(state)
    except ConfigError as exc:
        raise ModelFileError(source, f"looks like a Z-Image ControlNet but {exc}") from exc
    _check_diffusers_config(source, spec)
    unused: tuple[str, ...] = ()
    if spec.refiner == CONTROL_LAYERS:
        unused = tuple(sorted(k for k in state if k.startswith("control_noise_refiner.")))
        state = {k: v for k, v in state.items() if k not in unused}
    return ControlNetFile(spec, layout, state, unused)


def _from_comfy(state: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in state.items():
        if key.endswith(".attention.qkv.weight"):
            base = key[: -len("qkv.weight")]
            q, k, v = value.chunk(3, dim=0)  # type: ignore[attr-defined]
            out[base + "to_q.weight"], out[base + "to_k.weight"], out[base + "to_v.weight"] = q, k, v
            continue
        for rx, new in _COMFY_RENAMES:
            key = rx.sub(new, key)
        out[key] = value
    return out


def _shape(state: dict[str, object], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ConfigError(f"tensor {key!r} is missing")
    return tuple(state[key].shape)  # type: ignore[attr-defined]


def _all_zero(state: dict[str, object], key: str) -> bool:
    value = state.get(key)
    return isinstance(value, torch.Tensor) and not bool(value.any())


def spec_from_tensors(state: dict[str, object]) -> ControlNetSpec:
    """The release and sizes of a ControlNet from its tensors (diffusers names)."""
    dim, features = _shape(state, MARKER)
    if features % 4:
        raise ConfigError(f"its control embedder takes {features} features, not 4 per channel")
    in_dim = features // 4
    (head_dim,) = _shape(state, "control_layers.0.attention.norm_q.weight")
    n_blocks = count_indexed(state, "control_layers")
    refiner_blocks = count_indexed(state, "control_noise_refiner")
    if "control_noise_refiner.0.after_proj.weight" in state:
        zero = _all_zero(state, "control_noise_refiner.0.after_proj.weight") and _all_zero(
            state, "control_noise_refiner.0.before_proj.weight"
        )
        refiner = CONTROL_LAYERS if zero else CONTROL_REFINER
    elif refiner_blocks:
        refiner = PLAIN
    else:
        refiner, refiner_blocks = CONTROL_LAYERS, 2  # 2.0 converted by diffusers: its refiner dropped
    if in_dim not in (16, 33) or (refiner == PLAIN) != (in_dim == 16):
        raise ConfigError(
            f"its {in_dim} control channels and {refiner} refiner match no release (1.0: 16 channels, "
            "plain refiner; 2.x: 33 channels)"
        )
    release = RELEASES.get((in_dim, refiner, n_blocks), f"variant with {n_blocks} control blocks")
    return ControlNetSpec(release, in_dim, n_blocks, refiner, dim, dim // head_dim, refiner_blocks)


def _check_diffusers_config(source: Path, spec: ControlNetSpec) -> None:
    config = source / "config.json"
    if not (source.is_dir() and config.is_file()):
        return
    raw = json.loads(config.read_text(encoding="utf-8"))
    if raw.get("_class_name", "ZImageControlNetModel") != "ZImageControlNetModel":
        raise ModelFileError(source, f"holds a {raw['_class_name']}, not a ZImageControlNetModel")
    places = raw.get("control_layers_places")
    if places is not None and tuple(places) != spec.places(MAIN_LAYERS):
        raise ModelFileError(
            source,
            f"config.json places its control blocks at {places}; this release puts them at "
            f"{list(spec.places(MAIN_LAYERS))}",
        )


def load_controlnet(source: Path, *, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """diffusers' `ZImageControlNetModel` (built on meta, the file's tensors assigned) and the file info."""
    from diffusers.models.controlnets.controlnet_z_image import ZImageControlNetModel

    info = read_controlnet(source)
    main = MAIN_LAYERS if info.spec.n_blocks <= MAIN_LAYERS else info.spec.n_blocks
    model = build_empty(lambda: ZImageControlNetModel(**info.spec.diffusers_kwargs(main)))
    assign_state_dict(model, info.state_dict, dtype=dtype, device=device, source=source)
    return model, info


def controlnet_file(ckpt_path: Path) -> bool:
    """Whether `ckpt_path` holds a Z-Image ControlNet (header only; for listings)."""
    try:
        return is_controlnet(set(open_checkpoint(ckpt_path).tensors))
    except ModelFileError:
        return False
