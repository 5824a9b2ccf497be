"""`zturbo models`: what is present, what it is, which file `generate` uses, and what is missing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zturbo.checkpoints.detect import DIT, KIND_LABELS, TEXT_ENCODER, VAE
from zturbo.checkpoints.layout import (
    COMFY_FILES,
    FOLDERS,
    Candidate,
    candidates,
    default_candidate,
    default_models_dir,
    examine,
    missing_message,
)
from zturbo.checkpoints.reader import open_checkpoint

CHOICE_OPTIONS = {DIT: "--dit", TEXT_ENCODER: "--text-encoder", VAE: "--vae"}  # generate's file choices


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return ""


def _describe(candidate: Candidate) -> str:
    if candidate.detection is None:
        return f"unusable: {candidate.problem}"
    dtypes = open_checkpoint(candidate.path).dtype_summary()
    return f"{candidate.detection.description}, {dtypes}, {_size(candidate.path)}"


def describe_file(path: Path) -> tuple[str | None, str]:
    """(kind or None, one-line description) for a weight file."""
    candidate = examine(path, path.name)
    return candidate.kind, _describe(candidate)


@dataclass(frozen=True)
class Inventory:
    lines: list[str]
    ready: bool  # every component has a usable file: `generate` can run


def inventory(models_dir: Path | None) -> Inventory:
    """Each component's files, marked ok / unusable, the one `generate` picks by default, and what is
    missing."""
    models_dir = models_dir or default_models_dir()
    lines = [f"models folder: {models_dir.resolve()}"]
    found = {kind: candidates(models_dir, kind) for kind in (DIT, TEXT_ENCODER, VAE)}
    missing = []
    for kind, files in found.items():
        lines.append(f"{KIND_LABELS[kind]} ({' or '.join(f + '/' for f in FOLDERS[kind])}):")
        chosen = default_candidate(models_dir, kind, files)
        if chosen is None:
            missing.append(kind)
        if not files:
            lines.append(f"  missing (expected {COMFY_FILES[kind]})")
        for file in files:
            text = _describe(file)
            if file.kind not in (kind, None):
                text += f" — belongs with the {KIND_LABELS[file.kind]} files"
            if file is chosen:
                text += "  <- generate uses this"
                if sum(f.kind == kind for f in files) > 1:
                    text += f" (another: {CHOICE_OPTIONS[kind]} NAME)"
            mark = "ok" if file.kind == kind else "!!"
            lines.append(f"  [{mark}] {file.path.relative_to(models_dir).as_posix()}: {text}")
    if missing:
        lines.append("")
        lines.extend(missing_message(models_dir, missing, found).splitlines())
    else:
        lines.append("all three files present")
    return Inventory(lines, not missing)


def describe_models(models_dir: Path | None) -> list[str]:
    return inventory(models_dir).lines
