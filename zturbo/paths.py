"""Path safety for names that come from outside: prompts (SaveImage prefixes, LoadImage names, model
names) and HTTP clients (`/view`, `/upload`).

Such a name must never reach outside its folder, whether through `..`, an absolute path, a drive
letter, or a symlink placed inside the folder. Two layers, both needed: the text is split into plain
parts (`relative_parts`), which catches `..`, absolute and drive paths on every OS; then the real path
(symlinks followed) must lie inside the folder's real path (`ensure_inside`, `real_path_inside`), which
catches symlinks and anything the text check missed.

Refusals are plain `InputError`s (their type reaches clients in ComfyUI's `exception_type`); the
HTTP layer, which answers 403 for a `..` and 400 for other malformed names, asks `path_problem`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

from zturbo.errors import InputError

FOLDER_TYPES = ("output", "input", "temp")
_DRIVE = re.compile(r"^[A-Za-z]:")
PathProblem = Literal["nul", "absolute", "parent"]


def is_drive_path(text: str) -> bool:
    """`C:...`: a Windows drive path (absolute or drive-relative), refused on every OS."""
    return _DRIVE.match(text) is not None


def split_annotation(name: str) -> tuple[str, str | None]:
    """`"a.png [output]"` -> `("a.png", "output")`; `(name, None)` when there is no annotation.

    ComfyUI's `folder_paths.annotated_filepath` rule: the name ends with one space and `[type]`.
    Without the space it is no annotation (ComfyUI would cut the name's last letter).
    """
    for kind in FOLDER_TYPES:
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def _split(relative: str) -> tuple[tuple[str, ...], PathProblem | None]:
    """The parts of a relative path (`\\` counts as `/`, empty and `.` parts dropped) and its problem."""
    if "\x00" in relative:
        return (), "nul"
    cleaned = relative.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if path.is_absolute() or is_drive_path(cleaned):
        return (), "absolute"
    parts = tuple(p for p in path.parts if p not in ("", "."))
    return parts, "parent" if ".." in parts else None


def path_problem(relative: str) -> PathProblem | None:
    """Why `relative` is no safe path below a folder (NUL, absolute or drive, `..`), or None."""
    return _split(relative)[1]


def relative_parts(relative: str, *, what: str) -> tuple[str, ...]:
    """The parts of a relative path (`\\` counts as `/`, empty and `.` parts dropped).

    Refuses a NUL character, absolute paths, drive letters and `..` whatever the OS; `what` names
    the value in the message.
    """
    parts, problem = _split(relative)
    if problem == "nul":
        raise InputError(f"{what} {relative!r} contains a NUL character")
    if problem == "absolute":
        raise InputError(f"{what} {relative!r} is an absolute path; only paths inside the folder are allowed")
    if problem == "parent":
        raise InputError(f"{what} {relative!r} contains '..'; only paths inside the folder are allowed")
    return parts


def is_within(root: Path, path: Path) -> bool:
    """Whether `path` is `root` or below it, by their text: both must already be resolved."""
    return path == root or root in path.parents


def real_path_inside(root: Path, candidate: Path) -> Path | None:
    """`candidate`'s real path if it lies inside `root`'s real path, else None.

    Parts that do not exist yet are taken as they are, so a path can be checked before it is created.
    """
    real = Path(os.path.realpath(candidate))
    return real if is_within(Path(os.path.realpath(root)), real) else None


def ensure_inside(root: Path, candidate: Path, *, what: str) -> Path:
    """`candidate` itself, once its real path is proven to lie inside `root`'s; else `InputError`."""
    if real_path_inside(root, candidate) is None:
        real_root = Path(os.path.realpath(root))
        raise InputError(f"{what} resolves outside its folder ({real_root}); refusing it")
    return candidate


def safe_join(root: Path, relative: str, *, what: str) -> Path:
    """`root / relative`, refused unless it stays inside `root` once symlinks are resolved."""
    parts = relative_parts(relative, what=what)
    return ensure_inside(root, root.joinpath(*parts), what=what)


def make_folder_inside(root: Path, parts: Sequence[str], *, what: str) -> Path:
    """`root / parts`, created (with `root`) if needed, proven to stay inside `root`.

    The deepest part that already exists is checked before anything is created, so a symlinked
    subfolder pointing elsewhere is refused before a folder is made through it; the result is checked
    again once created. `parts` must come from `relative_parts` (or an equally strict check).
    """
    root.mkdir(parents=True, exist_ok=True)
    target = root.joinpath(*parts)
    existing = target
    while not os.path.lexists(existing) and existing != root:
        existing = existing.parent
    ensure_inside(root, existing, what=what)
    target.mkdir(parents=True, exist_ok=True)
    return ensure_inside(root, target, what=what)
