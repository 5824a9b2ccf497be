"""The creator page's ControlNet panel: settings → ComfyUI nodes in the queued graph, and the preview of
the preprocessed map.

The graph gets LoadImage → (Canny | ImageScaleBy down + up for tile | nothing for given maps) →
ModelPatchLoader (the first Z-Image ControlNet found) → ZImageFunControlnet between the model's flow
shift and the KSampler: the same nodes a ComfyUI user would wire, so the PNG's workflow runs in ComfyUI.
The preview uses zturbo.preprocess, whose Canny is the Canny node's computation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from zturbo.checkpoints.layout import folder_dirs
from zturbo.control import find_controlnet
from zturbo.paths import safe_join, split_annotation

ControlType = Literal["canny", "depth", "pose", "lineart", "tile", "raw"]
TILE_FACTOR = 4.0


class ControlSettings(BaseModel):
    image: str = Field(min_length=1, max_length=500)  # a name in the input folder (POST /upload/image)
    type: ControlType = "canny"
    strength: float = Field(default=0.75, ge=-10.0, le=10.0)
    low: float = Field(default=0.4, ge=0.01, le=0.99)
    high: float = Field(default=0.8, ge=0.01, le=0.99)


def _patch_name(models_dir: Path) -> str:
    path = find_controlnet(models_dir)
    for folder in ("model_patches", "controlnet"):
        for base in folder_dirs(models_dir, folder):
            if path.is_relative_to(base):
                return path.relative_to(base).as_posix()
    return path.name


def add_control(graph: dict[str, Any], control: ControlSettings, models_dir: Path) -> dict[str, Any]:
    """`api_graph`'s graph with the ControlNet nodes added (its node "4" is the shifted MODEL, "3" the
    VAE, "8" the KSampler)."""
    graph = dict(graph)
    graph["20"] = {"class_type": "LoadImage", "inputs": {"image": control.image}}
    source: list = ["20", 0]
    if control.type == "canny":
        graph["21"] = {
            "class_type": "Canny",
            "inputs": {"image": source, "low_threshold": control.low, "high_threshold": control.high},
        }
        source = ["21", 0]
    elif control.type == "tile":
        down = {"image": source, "upscale_method": "area", "scale_by": 1 / TILE_FACTOR}
        graph["21"] = {"class_type": "ImageScaleBy", "inputs": down}
        up = {"image": ["21", 0], "upscale_method": "bicubic", "scale_by": TILE_FACTOR}
        graph["22"] = {"class_type": "ImageScaleBy", "inputs": up}
        source = ["22", 0]
    graph["23"] = {"class_type": "ModelPatchLoader", "inputs": {"name": _patch_name(models_dir)}}
    graph["24"] = {
        "class_type": "ZImageFunControlnet",
        "inputs": {
            "model": graph["8"]["inputs"]["model"],
            "model_patch": ["23", 0],
            "vae": ["3", 0],
            "strength": control.strength,
            "image": source,
        },
    }
    graph["8"] = {**graph["8"], "inputs": {**graph["8"]["inputs"], "model": ["24", 0]}}
    return graph


def preview_png(input_dir: Path, image: str, kind: str, low: float, high: float) -> bytes:
    """The preprocessed control map of an input-folder image, as PNG bytes."""
    from zturbo.images import load_image
    from zturbo.output.png import to_pil
    from zturbo.preprocess import prepare_control

    plain, _ = split_annotation(image)
    pixels, _ = load_image(
        safe_join(input_dir, plain, what=f"control image {image!r}"), f"control image {image!r}"
    )
    control_map = prepare_control(pixels[:1], kind, low=low, high=high, tile_factor=TILE_FACTOR)
    buffer = io.BytesIO()
    to_pil(control_map[0]).save(buffer, format="PNG")
    return buffer.getvalue()
