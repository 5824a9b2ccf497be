"""Upscale models (ESRGAN/Real-ESRGAN and the other single-image super-resolution architectures the
`spandrel` package recognises), loaded safely and run in overlapping tiles.

Files: safetensors, or `.pth`/`.pt`/`.ckpt`/`.bin` read only through `torch.load(weights_only=True)`
(tensors and plain containers; anything else in the pickle is refused). spandrel only ever sees the
state dict (`load_from_state_dict`): it never opens the file.

Tiling (`upscale_tiled`): tiles of `tile` pixels overlapping by `overlap`, the last one flush with the
edge. Each tile's output counts only where it lies at least overlap/4 from the tile's inner edges and
fully from overlap/2 on (a linear ramp between), normalised by the weight sum: a model whose receptive
field reaches at most overlap/4 pixels gives the untiled result (up to float rounding); deeper models
(RealESRGAN_x4plus) get seams blended over the middle of each overlap. ComfyUI feathers over the whole
overlap instead, which mixes in each tile's least reliable edge.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zturbo.errors import InputError, ModelFileError
from zturbo.images import check_pixels

UPSCALE_TILE = 512  # ComfyUI's ImageUpscaleWithModel tile and overlap
UPSCALE_OVERLAP = 32
MIN_TILE = 64
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
# spandrel's package import brings in two architectures (RestoreFormer, LaMa) that import torchvision at
# module level; neither is an upscaler we run. Without a working torchvision they get these names, which
# fail if ever called.
_TORCHVISION_NAMES = ("normalize", "rotate")


@dataclass(frozen=True)
class UpscaleModel:
    """UPSCALE_MODEL: a spandrel `ImageModelDescriptor` in eval mode, plus where it came from."""

    descriptor: Any
    path: Path

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of an upscale-model file, read without running any of its code."""
    suffix = path.suffix.lower()
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif suffix in TORCH_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ModelFileError(path, f"unknown upscale model format {suffix!r} (use .safetensors or .pth)")
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except Exception as exc:  # safetensors header errors, UnpicklingError for refused globals, ...
        raise ModelFileError(path, f"not a readable weights file ({type(exc).__name__}: {exc})") from None
    return _tensors(path, state)


def _tensors(path: Path, state: Any) -> dict[str, Tensor]:
    """The state dict inside a checkpoint (`params_ema`, `params`, `state_dict`, `model` wrappers)."""
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ModelFileError(path, "holds no state dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ModelFileError(path, "holds no tensors")
    return tensors


def import_spandrel() -> types.ModuleType:
    """`spandrel`, importable without torchvision (see `_TORCHVISION_NAMES`)."""
    try:
        return importlib.import_module("spandrel")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "spandrel":
            raise InputError("upscale models need the spandrel package: pip install spandrel") from None
        if (exc.name or "").split(".")[0] != "torchvision":
            raise
    except RuntimeError:  # a torchvision built for another torch fails while importing
        pass
    for name in [m for m in sys.modules if m.split(".")[0] in ("spandrel", "torchvision")]:
        del sys.modules[name]
    placeholders = _torchvision_placeholders()
    sys.modules.update(placeholders)
    try:
        return importlib.import_module("spandrel")
    finally:
        for name in placeholders:
            sys.modules.pop(name, None)


def _torchvision_placeholders() -> dict[str, types.ModuleType]:
    def missing(*_: Any, **__: Any) -> Any:
        raise InputError("this model architecture needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    for name in _TORCHVISION_NAMES:
        setattr(functional, name, missing)
    functional.InterpolationMode = types.SimpleNamespace(NEAREST=0, BILINEAR=2)  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    return {
        "torchvision": package,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


def load_upscale_model(path: Path, device: torch.device) -> UpscaleModel:
    """Read `path` and build its model with spandrel; refuse what is not a single-image upscaler."""
    spandrel = import_spandrel()
    state = read_state_dict(path)
    if "module.layers.0.residual_group.blocks.0.norm1.weight" in state:  # as ComfyUI: some SwinIR saves
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ModelFileError(path, "not an upscale model architecture spandrel recognises") from None
    except Exception as exc:
        raise ModelFileError(path, f"could not build its model ({type(exc).__name__}: {exc})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose == "FaceSR":
        raise ModelFileError(path, f"is a {descriptor.architecture.name} model, not a single-image upscaler")
    descriptor.eval()
    dtype = torch.float16 if device.type == "cuda" and descriptor.supports_half else torch.float32
    descriptor.to(device=device, dtype=dtype)
    return UpscaleModel(descriptor, path)


def _axis_tiles(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: stride tile − overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return [*starts, size - tile]


def _axis_weight(start: int, length: int, size: int, overlap: int, scale: int) -> Tensor:
    """Per-output-pixel weight of one tile along one axis (see the module docstring)."""
    d = torch.arange(length * scale, dtype=torch.float32) + 0.5
    inf = torch.full_like(d, float("inf"))
    left = d if start > 0 else inf
    right = length * scale - d if start + length < size else inf
    if overlap == 0:
        return torch.ones_like(d)
    quarter = overlap * scale / 4
    return ((torch.minimum(left, right) - quarter) / quarter).clamp(0, 1)


def upscale_tiled(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    scale: int,
    tile: int = UPSCALE_TILE,
    overlap: int = UPSCALE_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Run `fn` ((1, C, h, w) → (1, C', h·scale, w·scale)) over one image (1, C, H, W) in tiles."""
    if not 0 <= overlap < tile:
        raise InputError(f"tile overlap must be from 0 to tile - 1 (tile {tile}, overlap {overlap})")
    _, _, height, width = x.shape
    ys, xs = _axis_tiles(height, tile, overlap), _axis_tiles(width, tile, overlap)
    out = weights = None
    done, total = 0, len(ys) * len(xs)
    for y in ys:
        h = min(tile, height)
        wy = _axis_weight(y, h, height, overlap, scale)
        for x0 in xs:
            w = min(tile, width)
            part = fn(x[:, :, y : y + h, x0 : x0 + w]).float().cpu()
            if out is None or weights is None:  # set together, on the first tile
                out = torch.zeros(1, part.shape[1], height * scale, width * scale)
                weights = torch.zeros(1, 1, height * scale, width * scale)
            weight = wy[:, None] * _axis_weight(x0, w, width, overlap, scale)[None, :]
            region = (
                slice(None),
                slice(None),
                slice(y * scale, (y + h) * scale),
                slice(x0 * scale, (x0 + w) * scale),
            )
            out[region] += part * weight
            weights[region] += weight
            done += 1
            if progress is not None:
                progress(done, total)
    assert out is not None and weights is not None
    return out / weights


@torch.no_grad()
def upscale_image(
    model: UpscaleModel,
    image: Tensor,
    tile: int = UPSCALE_TILE,
    overlap: int = UPSCALE_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """IMAGE [B, H, W, 3] → IMAGE [B, H·s, W·s, 3] clamped to 0..1 (ImageUpscaleWithModel)."""
    desc = model.descriptor
    batch, height, width = image.shape[:3]
    check_pixels(width * model.scale, height * model.scale, "the upscaled image", batch)
    param = next(desc.model.parameters())
    x = image[..., :3].movedim(-1, 1)
    if desc.input_channels == 1:  # as ComfyUI: luminance for greyscale models
        x = (x * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1, keepdim=True)

    def run(t: Tensor) -> Tensor:
        return desc(t.to(param.device, param.dtype))

    outs = [upscale_tiled(run, x[b : b + 1], model.scale, tile, overlap, progress) for b in range(batch)]
    out = torch.cat(outs).clamp(0, 1).movedim(1, -1)
    return out.expand(-1, -1, -1, 3) if out.shape[-1] == 1 else out
