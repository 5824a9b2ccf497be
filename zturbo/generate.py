"""Generation end to end: request → plan → load → patch → encode → sample → decode → save.

Text to image, and on the same path the image passes (`generate --image/--mask/--hires`, `zturbo
upscale`): an init image is fitted to the size (`request.fit_rule`), VAE-encoded and sampled at
`denoise` (ComfyUI's KSampler: int(steps/denoise) sigmas, the last steps+1 kept), within the mask when
there is one, then pasted back over the original through the (grown, blurred) mask so unmasked pixels
stay exact; a hires pass upscales (a model or Lanczos) and refines at `hires_denoise`. Each stage is
the function the matching ComfyUI node calls, and the PNG's embedded graph is those nodes
(`output.metadata.api_graph`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from zturbo import masks
from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.hashing import short_hash
from zturbo.checkpoints.layout import ModelPaths, loader_name
from zturbo.control import ControlRequest, apply_request
from zturbo.engine import Conditioning, Engine, ZImageModel
from zturbo.errors import InputError, ZTurboError
from zturbo.images import image_size, load_image, load_mask
from zturbo.lora.files import check_lora, lora_hash, lora_name, resolve_lora
from zturbo.lora.read import LoraFile
from zturbo.models.vae import LATENT_CHANNELS
from zturbo.nodes.image import crop_image, scale_image
from zturbo.output.files import write_temp
from zturbo.output.metadata import (
    ModelFiles,
    api_graph,
    parameters_text,
    parse_parameters,
    request_from_api_graph,
    weight_dtype_from_chunks,
)
from zturbo.output.naming import SAVE_IMAGE_PATTERN, save_target, write_numbered
from zturbo.output.png import read_png_text, save_png
from zturbo.progress import ProgressFn
from zturbo.request import GenerationRequest, LoraChoice, default_size, fit_rule, size_for_aspect
from zturbo.runtime.memory import Workload
from zturbo.sampling.samplers import UNCOND_SAMPLERS, evaluates_negative

PhaseFn = Callable[[str], None]  # told "loading models", "encoding the prompt", "sampling", "decoding"


@dataclass(frozen=True)
class Generated:
    images: torch.Tensor  # (B, H, W, 3) in [0, 1]
    latents: torch.Tensor  # raw VAE space
    request: GenerationRequest
    positions: tuple[int, ...] | None = None  # each image's place in the request's batch (None: 0, 1, ...)

    def position(self, index: int) -> int:
        return index if self.positions is None else self.positions[index]

    def only(self, position: int) -> Generated:
        """The image at `position` of the batch (what a PNG with that `Batch pos` holds)."""
        if not 0 <= position < len(self.images):
            raise InputError(f"batch position {position} is outside the batch of {len(self.images)}")
        keep = slice(position, position + 1)
        return replace(self, images=self.images[keep], latents=self.latents[keep], positions=(position,))


def workload_of(request: GenerationRequest) -> Workload:
    """What the memory plan must fit for `request` (CFG++ samplers run the negative even at cfg 1;
    a hires pass runs at its larger size)."""
    cfg_pp = request.sampler in UNCOND_SAMPLERS
    width, height = request.hires_size if request.hires_scale > 1 else (request.width, request.height)
    return Workload(width, height, request.batch, request.cfg, uncond_at_cfg1=cfg_pp)


@dataclass(frozen=True)
class InitImage:
    """An init image fitted to the request's size, and its mask (None: no inpainting) fitted alike."""

    pixels: torch.Tensor  # (1, H, W, 3)
    mask: torch.Tensor | None  # (1, H, W), 1 = repaint


def fit_to(image: torch.Tensor, width: int, height: int, rule: str) -> torch.Tensor:
    """IMAGE [B, H, W, C] to width×height by `fit_rule`'s rule (ImageCrop or ImageScale)."""
    if rule == "crop":
        x, y = (image.shape[2] - width) // 2, (image.shape[1] - height) // 2
        return crop_image(image, width, height, x, y)
    return scale_image(image, "lanczos", width, height, "center")


def load_init(request: GenerationRequest) -> InitImage:
    """Read `request.image` (and `request.mask`, same size) and fit both to the request's size."""
    pixels, alpha = load_image(Path(request.image), f"--image {request.image}")
    pixels, alpha = pixels[:1], alpha[:1]
    mask = None
    if request.mask == "alpha":
        if alpha.shape[-2:] != pixels.shape[1:3]:
            raise InputError(f"--mask alpha: {request.image} has no alpha channel")
        mask = alpha
    elif request.mask:
        mask = load_mask(Path(request.mask), "red", f"--mask {request.mask}")
        masks.check_size(mask, pixels, f"--mask {request.mask}")
    rule = fit_rule(pixels.shape[2], pixels.shape[1], request.width, request.height)
    pixels = fit_to(pixels, request.width, request.height, rule)
    if mask is not None:  # as MaskToImage → the same crop/scale → ImageToMask
        mask = fit_to(mask[..., None].expand(-1, -1, -1, 3), request.width, request.height, rule)[..., 0]
    return InitImage(pixels, mask)


def _sample(
    engine: Engine, model: ZImageModel, positive: Conditioning, negative: Conditioning | None,
    latent: torch.Tensor, request: GenerationRequest, progress: ProgressFn | None, **kw: object,
) -> torch.Tensor:  # fmt: skip
    return engine.sample(
        model, positive, negative, latent, seed=request.seed, steps=request.steps, cfg=request.cfg,
        sampler_name=request.sampler, scheduler=request.scheduler, progress=progress, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def image_pass(
    engine: Engine, vae, model, positive, negative, init: InitImage, request: GenerationRequest, progress
) -> tuple[torch.Tensor, torch.Tensor]:
    """Img2img or inpaint: VAEEncode → [SetLatentNoiseMask(grown mask)] → KSampler(denoise) → VAEDecode →
    [ImageCompositeMasked over the original through the grown, blurred mask]."""
    latent = engine.encode(vae, init.pixels)
    noise_mask = None if init.mask is None else masks.grow(init.mask, request.mask_grow)
    latents = _sample(
        engine,
        model,
        positive,
        negative,
        latent,
        request,
        progress,
        denoise=request.denoise,
        noise_mask=noise_mask,
    )
    images = engine.decode(vae, latents)
    if noise_mask is not None:
        paste = masks.blur(noise_mask, request.mask_blur)
        images = masks.composite(init.pixels.movedim(-1, 1), images.movedim(-1, 1), 0, 0, paste).movedim(
            1, -1
        )
    return images, latents


def hires_pass(
    engine: Engine, vae, model, positive, negative, images: torch.Tensor, request: GenerationRequest,
    progress: ProgressFn | None, upscale_model: Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """[UpscaleModelLoader → ImageUpscaleWithModel] → ImageScale(Lanczos, hires size) → VAEEncode →
    KSampler(hires_steps, hires_denoise) → VAEDecode."""
    if request.upscale_model:
        path = upscale_model or upscale_model_path(None, request.upscale_model)
        images = engine.upscale(engine.load_upscale_model(path), images, progress)
    width, height = request.hires_size
    images = scale_image(images, "lanczos", width, height, "disabled")
    latent = engine.encode(vae, images)
    refine = replace(request, steps=request.hires_steps)
    latents = _sample(
        engine, model, positive, negative, latent, refine, progress, denoise=request.hires_denoise
    )
    return engine.decode(vae, latents), latents


def upscale_model_path(models_dir: Path | None, name: str) -> Path:
    """An upscale model named by path, or by its name under the models folder's upscale_models/."""
    candidates = [Path(name)] + ([models_dir / "upscale_models" / name] if models_dir is not None else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(f"upscale model {name!r} not found (looked in: {', '.join(map(str, candidates))})")


def resolve_loras(request: GenerationRequest, models_dir: Path | None) -> GenerationRequest:
    """The request with each LoRA named by its file's path and carrying its content hash (a recorded
    hash must match: `lora.files.resolve_lora`). Cheap to repeat (hashes are cached)."""
    loras = []
    for choice in request.loras:
        path = resolve_lora(choice.name, models_dir, choice.hash)
        loras.append(replace(choice, name=str(path), hash=lora_hash(path, models_dir)))
    return replace(request, loras=tuple(loras))


def check_loras(
    request: GenerationRequest, models_dir: Path | None
) -> tuple[GenerationRequest, list[LoraFile]]:
    """`resolve_loras`, then each file read and its report made, before any model loads."""
    request = resolve_loras(request, models_dir)
    return request, [check_lora(Path(choice.name)) for choice in request.loras]


def apply_loras(engine: Engine, model: ZImageModel, clip, loras: tuple[LoraChoice, ...]):
    """The patch step: MODEL and CLIP carrying each LoRA at its strengths (applied to the live weights
    right before they run; a request without LoRAs leaves the base weights as they are)."""
    for choice in loras:
        model, clip = engine.load_lora(
            model, clip, Path(choice.name), choice.strength, choice.text_encoder_strength
        )
    return model, clip


def named_loras(request: GenerationRequest, models_dir: Path | None) -> GenerationRequest:
    """LoRAs named as LoraLoader names them (relative to models/loras), for the PNG's metadata."""
    loras = tuple(replace(c, name=lora_name(Path(c.name), models_dir)) for c in request.loras)
    return replace(request, loras=loras)


def run_request(
    engine: Engine,
    paths: ModelPaths,
    request: GenerationRequest,
    progress: ProgressFn | None = None,
    upscale_model: Path | None = None,
    phase: PhaseFn | None = None,
    control: ControlRequest | None = None,
    models_dir: Path | None = None,
) -> Generated:
    """The DiT loads with the engine's `weight_dtype` setting ("default", or an fp8 type that
    quantizes on load, as UNETLoader's choice does). `upscale_model`: the file `request.upscale_model`
    names (else that name is taken as a path). `phase(name)` is told when each phase begins
    (`progress` then reports the sampling steps). `control`: a ControlNet (zturbo.control), found in
    `models_dir`."""
    phase = phase or (lambda _name: None)
    request.validate(engine.sampler_names(), engine.scheduler_names())
    init = load_init(request) if request.image else None  # bad files fail before any model loads
    resolved = resolve_loras(request, models_dir)
    engine.prepare(paths, workload_of(request))
    phase("loading models")
    model, clip, vae = engine.load_all(paths, engine.settings.weight_dtype)
    if resolved.loras:
        phase("applying LoRAs")
        model, clip = apply_loras(engine, model, clip, resolved.loras)
    model = engine.with_shift(model, request.shift)
    if control is not None:
        model = apply_request(engine, model, vae, control, models_dir)
    phase("encoding the prompt")
    positive = engine.encode_text(clip, request.prompt)
    negative = None
    if evaluates_negative(request.sampler, request.cfg):  # CFG++ samplers read it even at cfg 1
        negative = engine.encode_text(clip, request.negative)
    phase("sampling")
    first = engine.with_variety(model, request.variety, request.variety_steps) if request.variety else model
    if init is None:
        empty = torch.zeros(request.batch, LATENT_CHANNELS, request.height // 8, request.width // 8)
        latents = _sample(
            engine, first, positive, negative, empty, request, progress, denoise=request.denoise
        )
        phase("decoding")
        images = engine.decode(vae, latents)
    elif request.denoise > 0:
        images, latents = image_pass(engine, vae, first, positive, negative, init, request, progress)
    else:  # `zturbo upscale`: the image goes straight to the refine pass
        images, latents = init.pixels, torch.empty(0)
    if request.hires_scale > 1:
        images, latents = hires_pass(
            engine, vae, model, positive, negative, images, request, progress, upscale_model
        )
    return Generated(images, latents, named_loras(resolved, models_dir))


def model_files(paths: ModelPaths, models_dir: Path | None, weight_dtype: str = "default") -> ModelFiles:
    """Names as ComfyUI's loaders list them (relative to the models subfolder), short hashes, and the
    load-time weight dtype (so the PNG's graph quantizes the same way)."""
    cache = (models_dir or paths.dit.parent) / ".zturbo"
    return ModelFiles(
        dit=loader_name(models_dir, DIT, paths.dit),
        text_encoder=loader_name(models_dir, TEXT_ENCODER, paths.text_encoder),
        vae=loader_name(models_dir, VAE, paths.vae),
        dit_hash=short_hash(paths.dit, cache),
        text_encoder_hash=short_hash(paths.text_encoder, cache),
        vae_hash=short_hash(paths.vae, cache),
        dit_weight_dtype=weight_dtype,
    )


def request_size(
    width: int | None, height: int | None, aspect: str | None, megapixels: float | None, image: Path | None
) -> tuple[int, int]:
    """The CLI's size: --width/--height, or --aspect/--megapixels (1 MP by default); with an init image
    and neither, the image's own size cropped to multiples of 16 (its aspect at --megapixels if given)."""
    if aspect is not None and (width or height):
        raise InputError("use either --aspect/--megapixels or --width/--height, not both")
    if aspect:
        return size_for_aspect(aspect, megapixels or 1.0)
    if image is not None and not (width or height):
        return default_size(*image_size(image, f"--image {image}"), megapixels)
    return width or 1024, height or 1024


def _graph_request(request: GenerationRequest) -> GenerationRequest:
    """The request as its PNG's graph names files: by name, as in ComfyUI's input and models folders."""
    name = lambda value: Path(value).name if value and value != "alpha" else value  # noqa: E731
    return replace(
        request, image=name(request.image), mask=name(request.mask), upscale_model=name(request.upscale_model)
    )


def save_generated(result: Generated, files: ModelFiles, out_dir: Path, prefix: str = "zturbo") -> list[Path]:
    """Save as the embedded graph's SaveImage would: `{prefix}_{counter:05}_.png`, never overwriting."""
    request = result.request
    size = image_size(request.image) if request.image else None
    graph = api_graph(_graph_request(request), files, filename_prefix=prefix, image_size=size)
    prompt = json.dumps(graph, ensure_ascii=False)

    def write(index: int, image: torch.Tensor, path: Path) -> None:
        parameters = parameters_text(result.request, files, batch_index=result.position(index))
        save_png(image, path, {"parameters": parameters, "prompt": prompt})

    height, width = result.images.shape[1:3]
    target = save_target(out_dir, prefix, int(width), int(height))
    return write_numbered(result.images, target, SAVE_IMAGE_PATTERN, write)


def rescue_dir() -> Path:
    """Where images go when the output folder cannot take them: the system's temporary folder."""
    return Path(tempfile.gettempdir()) / "zturbo-unsaved"


def save_or_keep(result: Generated, files: ModelFiles, out_dir: Path, prefix: str = "zturbo") -> list[Path]:
    """`save_generated`; if the output folder fails now, the images are saved in `rescue_dir()` and a
    one-line error names them (the work is not lost)."""
    try:
        return save_generated(result, files, out_dir, prefix)
    except (OSError, ZTurboError) as exc:
        reason = _reason(exc)
        try:
            kept = save_generated(result, files, rescue_dir(), prefix)
        except (OSError, ZTurboError) as second:
            raise ZTurboError(
                f"could not save the image into {out_dir} ({reason}), "
                f"nor into {rescue_dir()} ({_reason(second)})"
            ) from exc
        names = ", ".join(str(p) for p in kept)
        raise ZTurboError(f"could not save into {out_dir} ({reason}); the image is kept at {names}") from exc


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


def check_output_folder(out_dir: Path, option: str = "--out") -> Path:
    """Create `out_dir` if needed and prove a file can be written there, before any model loads."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{option} {out_dir}: is a file; expected a folder to save images in")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_temp(out_dir, lambda _path: None).unlink()
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(f"{option} {out_dir}: a part of this path is a file, not a folder") from exc
    except OSError as exc:
        raise InputError(f"{option} {out_dir}: cannot write there ({_reason(exc)})") from exc
    return out_dir


@dataclass(frozen=True)
class FromPng:
    """What a PNG says about how it was made."""

    request: GenerationRequest
    position: int | None  # its place in the batch (None: unknown, a ComfyUI graph)
    weight_dtype: str  # the DiT's load-time weight dtype


def request_from_png(path: Path) -> FromPng:
    """Settings from a PNG: zturbo's `parameters`, else a ComfyUI `prompt` graph."""
    text = read_png_text(path)
    weight_dtype = weight_dtype_from_chunks(text)
    if "parameters" in text and "Version: zturbo" in text["parameters"]:
        request, position = parse_parameters(text["parameters"])
        return FromPng(request, position, weight_dtype)
    if "prompt" in text:
        try:
            graph = json.loads(text["prompt"])
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: its ComfyUI `prompt` metadata is not valid JSON ({exc})") from exc
        return FromPng(request_from_api_graph(graph), None, weight_dtype)
    raise InputError(f"{path}: has no zturbo `parameters` or ComfyUI `prompt` metadata to regenerate from")
