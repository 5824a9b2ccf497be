"""What the creator page needs from the engine's metadata code: settings ⇄ API graph, and which model
file names the loaders will be given.

One implementation of "settings → graph": `zturbo.output.metadata.api_graph`, the graph `zturbo
generate` writes into its PNGs. The page never builds graphs itself.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.layout import COMFY_FILES, find_component, loader_name
from zturbo.errors import InputError, MissingModelError
from zturbo.images import image_size
from zturbo.output.metadata import ModelFiles, api_graph, request_from_api_graph
from zturbo.paths import safe_join, split_annotation
from zturbo.request import GenerationRequest
from zturbo.server.creator_control import ControlSettings, add_control
from zturbo.server.protocols import RegistryLike

DEFAULT_PREFIX = "zturbo"


class GraphRequest(BaseModel):
    # The form is a GenerationRequest field for field; pydantic checks the types, `validate` the ranges.
    settings: GenerationRequest
    filename_prefix: str = Field(default=DEFAULT_PREFIX, max_length=200)
    control: ControlSettings | None = None  # the ControlNet panel (zturbo.server.creator_control)


def settings_dict(request: GenerationRequest) -> dict[str, Any]:
    return asdict(request)


def model_files(models_dir: Path) -> ModelFiles:
    """The files present for each component; a missing one keeps its standard name, so validation
    reports it as ComfyUI would (`value_not_in_list`) and the models panel offers the download."""
    names: dict[str, str] = {}
    for kind in (DIT, TEXT_ENCODER, VAE):
        try:
            names[kind] = loader_name(models_dir, kind, find_component(models_dir, kind))
        except MissingModelError:
            names[kind] = COMFY_FILES[kind].split("/", 1)[1]
    return ModelFiles(dit=names[DIT], text_encoder=names[TEXT_ENCODER], vae=names[VAE])


def _combo(registry: RegistryLike, name: str) -> list[str]:
    try:
        spec = registry.object_info_for("KSampler")["input"]["required"][name]
    except (KeyError, TypeError):
        return []
    return list(spec[0]) if spec and isinstance(spec[0], list) else []


def ksampler_choices(registry: RegistryLike, name: str) -> list[str]:
    """KSampler's choices for `sampler_name` or `scheduler`, as /object_info lists them."""
    return _combo(registry, name)


def build_graph(
    body: GraphRequest, registry: RegistryLike, models_dir: Path, folders: dict[str, Path] | None = None
) -> dict[str, Any]:
    """Validate the settings against the registry's samplers and schedulers, then build the graph.
    An init image is named as LoadImage names it (`a.png`, `sub/a.png [output]`); `folders` (input,
    output) let its size decide crop vs scale (`request.fit_rule`)."""
    request = body.settings
    samplers, schedulers = _combo(registry, "sampler_name"), _combo(registry, "scheduler")
    request.validate(samplers or [request.sampler], schedulers or [request.scheduler])
    prefix = body.filename_prefix.strip() or DEFAULT_PREFIX
    size = _image_size(request.image, folders) if request.image and folders else None
    graph = api_graph(request, model_files(models_dir), filename_prefix=prefix, image_size=size)
    return graph if body.control is None else add_control(graph, body.control, models_dir)


def _image_size(name: str, folders: dict[str, Path]) -> tuple[int, int]:
    """The init image's size, through the same path checks and pixel cap as LoadImage."""
    plain, kind = split_annotation(name)
    path = safe_join(folders[kind or "input"], plain, what=f"image {name!r}")
    return image_size(path, f"image {name!r}")


def settings_from_graph(prompt: Any) -> dict[str, Any] | None:
    """Best-effort settings of an API graph (None when it is not a one-sampler text-to-image graph)."""
    if not isinstance(prompt, dict):
        return None
    try:
        return settings_dict(request_from_api_graph(prompt))
    except (InputError, KeyError, TypeError, ValueError, AttributeError):
        return None
