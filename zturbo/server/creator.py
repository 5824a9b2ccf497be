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
from zturbo.output.metadata import ModelFiles, api_graph, request_from_api_graph
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


def build_graph(body: GraphRequest, registry: RegistryLike, models_dir: Path) -> dict[str, Any]:
    """Validate the settings against the registry's samplers and schedulers, then build the graph."""
    request = body.settings
    samplers, schedulers = _combo(registry, "sampler_name"), _combo(registry, "scheduler")
    request.validate(samplers or [request.sampler], schedulers or [request.scheduler])
    prefix = body.filename_prefix.strip() or DEFAULT_PREFIX
    graph = api_graph(request, model_files(models_dir), filename_prefix=prefix)
    return graph if body.control is None else add_control(graph, body.control, models_dir)


def settings_from_graph(prompt: Any) -> dict[str, Any] | None:
    """Best-effort settings of an API graph (None when it is not a one-sampler text-to-image graph)."""
    if not isinstance(prompt, dict):
        return None
    try:
        return settings_dict(request_from_api_graph(prompt))
    except (InputError, KeyError, TypeError, ValueError, AttributeError):
        return None
