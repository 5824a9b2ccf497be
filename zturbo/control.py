"""ControlNets as model patches: what ModelPatchLoader returns, what ZImageFunControlnet attaches to a
MODEL, and how the engine turns that into control latents and per-forward control inputs.

A `ControlNetPatch` (MODEL_PATCH) is a loaded ControlNet file; a `ControlApplication` is one ControlNet
with its images and strength; a MODEL (`engine.ZImageModel`) carries a tuple of applications, so
patched models are values like any other (ComfyUI's `model.clone()` + patch), never global state.

Control latents, per release (matching VideoX-Fun and diffusers' pipelines):
- 1.0 (16 channels): the control image, VAE-encoded (distribution mode) and normalised.
- 2.x (33 channels): control latent ‖ 1 − mask ‖ masked-image latent. Without an inpaint image the last
  17 channels are zeros; without a control image the first 16 are. The mask (ComfyUI MASK: 1 =
  repaint) is binarised at 0.5; the inpaint image is grey (0.5) where it is 1 before encoding, and the
  mask channel is 1 − mask, nearest-resized to the latent (zeros without a mask; a mask without an
  inpaint image still fills it, as VideoX-Fun does). An inpaint image without a mask is encoded as it
  is (ComfyUI's behaviour; diffusers requires a mask).
Images are resized to the latent's pixel size (ComfyUI's `area` + centre crop) first.

Mask handling here is a minimal local helper (`binary_mask`): the img2img/inpaint work builds the
shared mask utilities; switch to them once merged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from zturbo.checkpoints.reader import open_checkpoint, torch_dtype_of
from zturbo.errors import InputError
from zturbo.models import controlnet as cn
from zturbo.models import vae as vae_ops
from zturbo.models.controlnet import ControlInput, ControlNetSpec, ZImageControlNet
from zturbo.resize import common_upscale
from zturbo.runtime.memory import Residence
from zturbo.runtime.offload import BlockStreamer
from zturbo.runtime.sizes import ComponentSize

log = logging.getLogger(__name__)
_STREAMER = "_zturbo_streamer"
_BLOCK = re.compile(r"^(control_noise_refiner|control_layers)\.(\d+)\.")


@dataclass
class ControlNetPatch:
    """MODEL_PATCH: a loaded ControlNet. `module` is diffusers' `ZImageControlNetModel` as loaded (speed
    `reference`) or zturbo's `ZImageControlNet` sharing its tensors (every other mode)."""

    module: nn.Module
    spec: ControlNetSpec
    source: Path
    description: str
    dtype: torch.dtype


@dataclass(frozen=True)
class ControlApplication:
    """One ControlNet applied to a MODEL (ZImageFunControlnet / QwenImageDiffsynthControlnet)."""

    patch: ControlNetPatch
    vae: Any  # the engine's VAE value
    strength: float
    image: Tensor | None = None  # IMAGE [B, H, W, 3]: the control map
    inpaint_image: Tensor | None = None  # IMAGE: the image to inpaint (2.x)
    mask: Tensor | None = None  # MASK [B, H, W], 1 = repaint
    refiner_to_base: bool = True  # False: diffusers' pipeline (2.x refiner hints stay in the ControlNet)
    _latents: dict = field(default_factory=dict, compare=False, repr=False)


def check_application(app: ControlApplication, dit_dim: int, dit_layers: int, dit_source: Path) -> None:
    """Refuse a ControlNet that does not fit the diffusion model, or images it cannot use."""
    spec = app.patch.spec
    if spec.dim != dit_dim:
        raise InputError(
            f"the ControlNet {app.patch.source.name} is for a {spec.dim}-wide Z-Image model; the diffusion "
            f"model {dit_source.name} is {dit_dim} wide"
        )
    try:
        spec.places(dit_layers)
    except ValueError as exc:
        raise InputError(f"the ControlNet {app.patch.source.name}: {exc}") from None
    if app.image is None and app.inpaint_image is None:
        raise InputError(
            "ZImageFunControlnet needs a control image (or, for 2.x ControlNets, an inpaint image)"
        )
    if not spec.inpaint and app.inpaint_image is not None:
        raise InputError(
            f"the ControlNet {app.patch.source.name} (release {spec.release}) has no inpaint mode: an inpaint "
            "image needs a 2.x ControlNet"
        )
    if not spec.inpaint and app.mask is not None:
        log.warning(
            "ControlNet %s (release %s) takes no mask; ignored, as ComfyUI does",
            app.patch.source.name,
            spec.release,
        )
    for name, image in (("image", app.image), ("inpaint_image", app.inpaint_image)):
        if image is not None and (image.dim() != 4 or image.shape[-1] < 3):
            raise InputError(
                f"ZImageFunControlnet's {name} must be an IMAGE [B, H, W, 3] (got {tuple(image.shape)})"
            )


def _resized(image: Tensor, width: int, height: int) -> Tensor:
    """IMAGE [B, H, W, C] at (height, width), as ComfyUI's patch scales it (area, centre crop)."""
    if tuple(image.shape[1:3]) == (height, width):
        return image[..., :3]
    return common_upscale(image[..., :3].movedim(-1, 1), width, height, "area", "center").movedim(1, -1)


def binary_mask(mask: Tensor, width: int, height: int) -> Tensor:
    """MASK [B, H, W] (or [H, W]) → [B, 1, height, width] of 0/1 (1 = repaint), binarised at 0.5."""
    mask = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    if tuple(mask.shape[-2:]) != (height, width):
        mask = common_upscale(mask, width, height, "bilinear", "center")
    return (mask >= 0.5).float()


def control_latents(engine: Any, app: ControlApplication, height: int, width: int) -> Tensor:
    """The control tokens' latents (B, C, h, w) in the model's space, for a latent of (height, width)."""
    key = (height, width)
    if key in app._latents:
        return app._latents[key]
    px_h, px_w = height * 8, width * 8

    def encode(image: Tensor) -> Tensor:
        return vae_ops.process_in(engine.encode(app.vae, image))

    control = encode(_resized(app.image, px_w, px_h)) if app.image is not None else None
    if not app.patch.spec.inpaint:
        assert control is not None  # validated: without an inpaint mode a control image is required
        app._latents[key] = control
        return control
    repaint = None if app.mask is None else binary_mask(app.mask, px_w, px_h)
    if repaint is None:
        keep = torch.zeros(1, 1, height, width)
    else:
        keep = torch.nn.functional.interpolate(1.0 - repaint, size=(height, width), mode="nearest")
    if app.inpaint_image is None:
        latent = torch.zeros(1, 16, height, width)
    else:
        inpaint = _resized(app.inpaint_image, px_w, px_h)
        if repaint is not None:
            inpaint = torch.where(cn.batched(repaint, inpaint.shape[0]).movedim(1, -1) >= 0.5, 0.5, inpaint)
        latent = encode(inpaint)
    n = max(keep.shape[0], latent.shape[0])
    extra = torch.cat([cn.batched(keep, n), cn.batched(latent, n)], dim=1)
    if control is None:
        control = torch.zeros(extra.shape[0], 16, height, width)
    n = max(control.shape[0], extra.shape[0])
    app._latents[key] = torch.cat([cn.batched(control, n), cn.batched(extra, n)], dim=1)
    return app._latents[key]


@dataclass(frozen=True)
class ReferenceControl:
    """A ControlNet for diffusers' transformer (speed `reference`): diffusers' own ControlNet model."""

    module: nn.Module
    spec: ControlNetSpec
    context: Tensor
    strength: float


def control_inputs(engine: Any, apps: tuple[ControlApplication, ...], height: int, width: int) -> list:
    """What the DiT's forward takes for these applications (zturbo's or diffusers' form)."""
    inputs: list = []
    for app in apps:
        context = control_latents(engine, app, height, width)
        module = app.patch.module
        if isinstance(module, ZImageControlNet):
            inputs.append(ControlInput(module, context, app.strength, app.refiner_to_base))
        else:
            inputs.append(ReferenceControl(module, app.patch.spec, context, app.strength))
    return inputs


# --- placement (memory plans) and sizes ---


def control_blocks(module: nn.Module) -> list[nn.Module]:
    """A ControlNet's blocks in the order a forward first runs them (zturbo's or diffusers' form)."""
    if isinstance(module, ZImageControlNet):
        return module.blocks()
    # diffusers' ZImageControlNetModel: its submodules, which nn.Module's __getattr__ cannot type
    refiner = cast("nn.ModuleList | None", module.control_noise_refiner)
    layers = cast(nn.ModuleList, module.control_layers)
    return [*(refiner if refiner is not None else []), *layers]


def realize(patch: ControlNetPatch, residence: Residence, *, mode: str, device: torch.device) -> None:
    """Convert (zturbo's form unless speed `reference`) and place: resident on `device`, or its blocks
    streamed from (pinned) RAM like the DiT's, two device slots of its own (all blocks stream: the plan
    keeps resident blocks of the DiT only)."""
    module = patch.module
    streamer = module.__dict__.pop(_STREAMER, None)
    if streamer is not None:
        streamer.detach()
    if mode != "reference" and not isinstance(module, ZImageControlNet):
        module = cn.from_diffusers(module, patch.spec)
    patch.module = module
    blocks = control_blocks(module)
    if not residence.streamed:
        module.to(device)
        for block in blocks:
            block.__dict__.pop("_zturbo_host_block", None)
        return
    inside = {id(m) for block in blocks for m in block.modules()}
    for m in module.modules():
        if id(m) not in inside:
            for p in m._parameters.values():
                if p is not None:
                    p.data = p.data.to(device)
    module.__dict__[_STREAMER] = BlockStreamer(blocks, device, pin=residence.pinned)
    log.info("ControlNet %s: %d blocks streamed", patch.source.name, len(blocks))


def measure(source: Path, dtype: torch.dtype) -> ComponentSize:
    """Loaded bytes of a ControlNet (headers only), per block in execution order, for the memory plan."""
    files = sorted(source.glob("*.safetensors")) if source.is_dir() else [source]
    blocks: dict[tuple[int, int], int] = {}
    other = hidden = 0
    for file in files:
        for name, info in open_checkpoint(file).tensors.items():
            stored = torch_dtype_of(info.dtype)
            size = stored.itemsize if stored is not None and not stored.is_floating_point else dtype.itemsize
            nbytes = size * int(torch.Size(info.shape).numel())
            if name.endswith("control_all_x_embedder.2-1.weight"):
                hidden = info.shape[0]
            if m := _BLOCK.match(name):
                key = (0 if m[1] == "control_noise_refiner" else 1, int(m[2]))
                blocks[key] = blocks.get(key, 0) + nbytes
            else:
                other += nbytes
    return ComponentSize(tuple(blocks[k] for k in sorted(blocks)), other, 0, hidden)


def combined(sizes: list[ComponentSize]) -> ComponentSize | None:
    """Several loaded ControlNets as one planned component (None when there is none)."""
    if not sizes:
        return None
    blocks = tuple(b for s in sizes for b in s.blocks)
    return ComponentSize(blocks, sum(s.other for s in sizes), 0, max(s.hidden for s in sizes))


# --- the CLI's ControlNet request ---

CONTROL_FOLDERS = ("model_patches", "controlnet")


@dataclass(frozen=True)
class ControlRequest:
    """`zturbo generate --control IMAGE --control-type T --control-strength S [--controlnet FILE]`."""

    image: Path
    kind: str = "canny"
    strength: float = 0.75
    controlnet: Path | None = None  # None: the first Z-Image ControlNet in model_patches/ or controlnet/
    low: float = 0.4
    high: float = 0.8

    def validate(self) -> ControlRequest:
        from zturbo.preprocess import CONTROL_TYPES

        if self.kind not in CONTROL_TYPES:
            raise InputError(f"--control-type must be one of {', '.join(CONTROL_TYPES)} (got {self.kind!r})")
        if not self.image.is_file():
            raise InputError(f"--control: {self.image} is not a file")
        if not -10.0 <= self.strength <= 10.0:
            raise InputError(f"--control-strength must be between -10 and 10 (got {self.strength})")
        if not (0.01 <= self.low <= 0.99 and 0.01 <= self.high <= 0.99 and self.low <= self.high):
            raise InputError(
                f"Canny thresholds must satisfy 0.01 <= low <= high <= 0.99 (got {self.low}, {self.high})"
            )
        return self


def find_controlnet(models_dir: Path) -> Path:
    """The first file in models/model_patches/ then models/controlnet/ that holds a Z-Image ControlNet."""
    from zturbo.checkpoints.controlnet import controlnet_file
    from zturbo.checkpoints.layout import weight_files
    from zturbo.errors import MissingModelError

    for folder in CONTROL_FOLDERS:
        for file in weight_files(models_dir / folder):
            if controlnet_file(file):
                return file
    raise MissingModelError(
        f"No Z-Image ControlNet in {models_dir / 'model_patches'} or {models_dir / 'controlnet'}: download e.g. "
        "Z-Image-Turbo-Fun-Controlnet-Union-2.1 from alibaba-pai into model_patches/, or pass --controlnet FILE"
    )


def apply_request(engine: Any, model: Any, vae: Any, request: ControlRequest, models_dir: Path | None) -> Any:
    """The MODEL with the CLI's ControlNet applied (the map preprocessed as --control-type says)."""
    from zturbo.checkpoints.layout import default_models_dir
    from zturbo.images import load_image
    from zturbo.preprocess import prepare_control

    path = request.controlnet or find_controlnet(models_dir or default_models_dir())
    image, _ = load_image(request.image, f"--control {request.image}")
    control_map = prepare_control(image, request.kind, low=request.low, high=request.high)
    return engine.apply_controlnet(model, engine.load_controlnet(path), vae, request.strength, control_map)
