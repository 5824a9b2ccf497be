"""Model folders as ComfyUI names them, for `/models` and `/models/{folder}`.

The graph context knows the real layout (`ExecutionContext.list_models`); without one, the models
directory is scanned with ComfyUI's folder names and legacy aliases.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_FOLDERS = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
)
# Old names still used by workflows and by folders on disk.
ALIASES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}
EXTRA_DIRS = {"text_encoders": ("clip",), "diffusion_models": ("unet",), "controlnet": ("t2i_adapter",)}
MODEL_EXTENSIONS = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".onnx")


def canonical_folder(folder: str) -> str | None:
    name = ALIASES.get(folder, folder)
    return name if name in MODEL_FOLDERS else None


def scan_folder(models_dir: Path, folder: str) -> list[str]:
    """Model files below `models_dir/folder` (and its legacy twin), relative, `/`-separated, sorted."""
    found: set[str] = set()
    for sub in (folder, *EXTRA_DIRS.get(folder, ())):
        base = models_dir / sub
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.lower().endswith(MODEL_EXTENSIONS):
                    found.add(Path(dirpath, name).relative_to(base).as_posix())
    return sorted(found)


def list_models(context: Any, models_dir: Path, folder: str) -> list[str]:
    """Ask the execution context first, so `/models` and node combos agree; fall back to a scan."""
    if context is not None and hasattr(context, "list_models"):
        try:
            return list(context.list_models(folder))
        except Exception:
            log.debug("context.list_models(%r) failed; scanning instead", folder, exc_info=True)
    return scan_folder(models_dir, folder)
