"""`zturbo models`: what is present, what it is, and what is missing."""

from __future__ import annotations

from pathlib import Path

from zturbo.checkpoints.detect import DIT, KIND_LABELS, TEXT_ENCODER, VAE, detect
from zturbo.checkpoints.layout import COMFY_FILES, FOLDERS, default_models_dir, missing_message, weight_files
from zturbo.checkpoints.reader import open_checkpoint
from zturbo.errors import ModelFileError


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return ""


def describe_file(path: Path) -> tuple[str | None, str]:
    """(kind or None, one-line description) for a weight file."""
    try:
        ckpt = open_checkpoint(path)
    except ModelFileError as exc:
        return None, f"unusable: {str(exc).split(': ', 1)[-1]}"
    found = detect(ckpt)
    return found.kind, f"{found.description}, {ckpt.dtype_summary()}, {_size(path)}"


def describe_models(models_dir: Path | None) -> list[str]:
    models_dir = models_dir or default_models_dir()
    lines = [f"models folder: {models_dir.resolve()}"]
    present: set[str] = set()
    for kind in (DIT, TEXT_ENCODER, VAE):
        lines.append(f"{KIND_LABELS[kind]} ({' or '.join(f + '/' for f in FOLDERS[kind])}):")
        files = [f for folder in FOLDERS[kind] for f in weight_files(models_dir / folder)]
        if not files:
            lines.append(f"  missing (expected {COMFY_FILES[kind]})")
        for file in files:
            found, text = describe_file(file)
            mark = "ok" if found == kind else "!!"
            if found == kind:
                present.add(kind)
            elif found is not None:
                text += f" — belongs with the {KIND_LABELS[found]} files"
            lines.append(f"  [{mark}] {file.relative_to(models_dir).as_posix()}: {text}")
    missing = [k for k in (DIT, TEXT_ENCODER, VAE) if k not in present]
    if missing:
        lines.append("")
        lines.extend(missing_message(models_dir, missing).splitlines())
    else:
        lines.append("all three files present")
    return lines
