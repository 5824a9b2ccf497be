"""Safe path handling for names that come from prompts (file names, subfolders, prefixes).

Prompts are untrusted input: a SaveImage prefix or a LoadImage name must never reach outside its
folder, whether through `..`, an absolute path, a drive letter, or a symlink placed inside the folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from zturbo.errors import InputError

_DRIVE = re.compile(r"^[A-Za-z]:")
# ComfyUI lets a LoadImage value name its folder: "photo.png [output]".
_ANNOTATION = re.compile(r"^(?P<name>.*?)\s*\[(?P<kind>input|output|temp)\]$")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def relative_parts(relative: str, *, what: str) -> tuple[str, ...]:
    """Split a user-given relative path, refusing absolute paths, drive letters and `..`."""
    if "\x00" in relative:
        raise InputError(f"{what} {relative!r} contains a NUL character")
    cleaned = relative.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if path.is_absolute() or _DRIVE.match(cleaned):
        raise InputError(f"{what} {relative!r} is an absolute path; only paths inside the folder are allowed")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if ".." in parts:
        raise InputError(f"{what} {relative!r} contains '..'; only paths inside the folder are allowed")
    return parts


def ensure_inside(root: Path, candidate: Path, *, what: str) -> Path:
    """Return `candidate` if its real path (symlinks resolved) lies inside `root`'s real path."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(candidate))
    if real != real_root and real_root not in real.parents:
        raise InputError(f"{what} resolves outside its folder ({real_root}); refusing it")
    return candidate


def safe_join(root: Path, relative: str, *, what: str) -> Path:
    """`root / relative`, refused unless it stays inside `root` once symlinks are resolved."""
    parts = relative_parts(relative, what=what)
    return ensure_inside(root, root.joinpath(*parts), what=what)


def split_annotation(name: str, default: str = "input") -> tuple[str, str]:
    """`"a.png [output]"` -> `("a.png", "output")`; names without an annotation use `default`."""
    match = _ANNOTATION.match(name)
    if match:
        return match.group("name"), match.group("kind")
    return name, default


def list_image_files(folder: Path) -> list[str]:
    """Image files directly in `folder`, sorted, as LoadImage lists them."""
    if not folder.is_dir():
        return []
    names = [
        entry.name
        for entry in folder.iterdir()
        if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(names)
