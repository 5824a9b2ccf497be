"""Text to image, end to end: request → plan → load → encode → sample → decode → save."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.hashing import short_hash
from zturbo.checkpoints.layout import ModelPaths, loader_name
from zturbo.engine import Engine
from zturbo.errors import InputError, ZTurboError
from zturbo.models.vae import LATENT_CHANNELS
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
from zturbo.request import GenerationRequest
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
    """What the memory plan must fit for `request` (CFG++ samplers run the negative even at cfg 1)."""
    cfg_pp = request.sampler in UNCOND_SAMPLERS
    return Workload(request.width, request.height, request.batch, request.cfg, uncond_at_cfg1=cfg_pp)


def run_request(
    engine: Engine,
    paths: ModelPaths,
    request: GenerationRequest,
    progress: ProgressFn | None = None,
    phase: PhaseFn | None = None,
) -> Generated:
    """The DiT loads with the engine's `weight_dtype` setting ("default", or an fp8 type that
    quantizes on load, as UNETLoader's choice does). `phase(name)` is told when each phase begins
    (`progress` then reports the sampling steps)."""
    phase = phase or (lambda _name: None)
    request.validate(engine.sampler_names(), engine.scheduler_names())
    engine.prepare(paths, workload_of(request))
    phase("loading models")
    model, clip, vae = engine.load_all(paths, engine.settings.weight_dtype)
    model = engine.with_shift(model, request.shift)
    phase("encoding the prompt")
    positive = engine.encode_text(clip, request.prompt)
    negative = None
    if evaluates_negative(request.sampler, request.cfg):  # CFG++ samplers read it even at cfg 1
        negative = engine.encode_text(clip, request.negative)
    empty = torch.zeros(request.batch, LATENT_CHANNELS, request.height // 8, request.width // 8)
    phase("sampling")
    latents = engine.sample(
        model,
        positive,
        negative,
        empty,
        seed=request.seed,
        steps=request.steps,
        cfg=request.cfg,
        sampler_name=request.sampler,
        scheduler=request.scheduler,
        denoise=request.denoise,
        progress=progress,
    )
    phase("decoding")
    return Generated(engine.decode(vae, latents), latents, request)


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


def save_generated(result: Generated, files: ModelFiles, out_dir: Path, prefix: str = "zturbo") -> list[Path]:
    """Save as the embedded graph's SaveImage would: `{prefix}_{counter:05}_.png`, never overwriting."""
    graph = api_graph(result.request, files, filename_prefix=prefix)
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
