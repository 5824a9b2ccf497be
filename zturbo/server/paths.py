"""Paths that clients name (`/view`, `/upload`) are checked twice: the text is refused if it could mean
anything but a plain relative name, and the resolved real path (symlinks followed) must stay inside its
root. Both layers matter: text checks catch `..`, absolute and drive paths on every OS; the resolve
check catches symlinks and anything the text checks missed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

from zturbo.errors import InputError
from zturbo.server.errors import ForbiddenPathError

FOLDER_TYPES = ("output", "input", "temp")
_DRIVE = re.compile(r"^[a-zA-Z]:")
_ANNOTATION = re.compile(r"^(?P<name>.*) \[(?P<type>output|input|temp)\]$")


def split_annotated(filename: str) -> tuple[str, str | None]:
    """`"a.png [output]"` -> `("a.png", "output")`: ComfyUI's way of naming a file with its folder."""
    match = _ANNOTATION.match(filename)
    return (match["name"], match["type"]) if match else (filename, None)


def _variants(text: str) -> list[str]:
    """The text and its URL-decoded forms (twice), so `%2e%2e%2f` and `%252e...` are judged too."""
    once = unquote(text)
    return [text, once, unquote(once)]


def check_filename(filename: str) -> str:
    """A bare file name: no separators, no `..`, no drive, no NUL. 400 otherwise."""
    if not filename or filename.strip() in ("", ".", ".."):
        raise InputError("filename is empty")
    for variant in _variants(filename):
        if "/" in variant or "\\" in variant or ".." in variant or "\x00" in variant or _DRIVE.match(variant):
            raise InputError(f"invalid filename {filename!r}")
    return filename


def check_subfolder(subfolder: str) -> list[str]:
    """A relative folder below a root as its parts. Absolute, drive or NUL -> 400; `..` -> 403."""
    if not subfolder:
        return []
    for variant in _variants(subfolder):
        if "\x00" in variant or "\\" in variant or _DRIVE.match(variant) or variant.startswith("/"):
            raise InputError(f"invalid subfolder {subfolder!r}")
        if ".." in variant.split("/"):
            raise ForbiddenPathError(f"subfolder {subfolder!r} leaves its folder")
    return [part for part in subfolder.split("/") if part not in ("", ".")]


def is_within(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def contained(root: Path, path: Path) -> Path:
    """`path` with symlinks resolved; 403 if that lands outside `root` (also resolved)."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if not is_within(real_root, real):
        raise ForbiddenPathError("path resolves outside its folder")
    return real


def root_for(folders: dict[str, Path], folder_type: str | None, default: str) -> tuple[Path, str]:
    kind = folder_type or default
    if kind not in folders:
        raise InputError(f"type must be one of {', '.join(FOLDER_TYPES)}, got {kind!r}")
    return folders[kind], kind


def readable_file(root: Path, subfolder: str, filename: str) -> Path:
    """The file a `/view` request names, proven to sit inside `root`."""
    parts = check_subfolder(subfolder)
    name = check_filename(filename)
    return contained(root, root.joinpath(*parts, name))


def writable_folder(root: Path, subfolder: str) -> Path:
    """The folder an upload goes to, created if needed, proven to sit inside `root`.

    The deepest existing ancestor is resolved first, so a symlinked subfolder pointing elsewhere is
    refused before anything is created through it.
    """
    parts = check_subfolder(subfolder)
    root.mkdir(parents=True, exist_ok=True)
    target = root.joinpath(*parts)
    existing = target
    while not os.path.lexists(existing) and existing != root:
        existing = existing.parent
    contained(root, existing)
    target.mkdir(parents=True, exist_ok=True)
    return contained(root, target)
