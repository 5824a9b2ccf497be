"""The HTTP layer over `zturbo.paths` for paths that clients name (`/view`, `/upload`, `/userdata`).

Clients may URL-encode a name once or twice more than the framework decodes, so every decoded form is
judged (`%2e%2e%2f` and `%252e...` are `../` too). A malformed name (absolute, drive, NUL, backslash,
over 255 bytes, not valid Unicode) is a 400 `InputError`; one that tries to leave its folder (`..` in
a subfolder, a symlink escape) or names a hidden file or folder (`.zturbo`, `.tmp-…` files being
written) is a 403 `ForbiddenPathError`. Hidden names are never served or written: that is where state
and half-written files live.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from zturbo.errors import InputError
from zturbo.paths import (
    FOLDER_TYPES,
    is_drive_path,
    make_folder_inside,
    path_problem,
    real_path_inside,
    relative_parts,
)
from zturbo.server.errors import ForbiddenPathError

_ESCAPE_MESSAGE = "path resolves outside its folder"
# Most file systems' limit for one name (ext4, NTFS, APFS), in bytes of UTF-8.
MAX_NAME_BYTES = 255


def check_part(part: str, what: str) -> str:
    """One name in a path: valid Unicode, at most 255 bytes, not hidden."""
    try:
        size = len(part.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(f"{what} {part!r} is not valid Unicode") from None
    if size > MAX_NAME_BYTES:
        raise InputError(f"{what} is {size} bytes long; a name may have at most {MAX_NAME_BYTES}")
    if part.startswith("."):
        raise ForbiddenPathError(f"{what} {part!r} is hidden; names starting with '.' are not served")
    return part


def is_hidden(relative: Path) -> bool:
    """Whether any part of a path below a root is hidden (for listings)."""
    return any(part.startswith(".") for part in relative.parts)


def _variants(text: str) -> list[str]:
    """The text and its URL-decoded forms (twice), so `%2e%2e%2f` and `%252e...` are judged too."""
    once = unquote(text)
    return [text, once, unquote(once)]


def check_filename(filename: str) -> str:
    """A bare file name: no separators, no `..` anywhere, no drive, no NUL. 400 otherwise."""
    if not filename or filename.strip() in ("", ".", ".."):
        raise InputError("filename is empty")
    for variant in _variants(filename):
        if (
            "/" in variant
            or "\\" in variant
            or ".." in variant
            or "\x00" in variant
            or is_drive_path(variant)
        ):
            raise InputError(f"invalid filename {filename!r}")
    return check_part(filename, "filename")


def check_subfolder(subfolder: str) -> list[str]:
    """A relative folder below a root as its parts. Absolute, drive, backslash or NUL -> 400; `..` -> 403."""
    for variant in _variants(subfolder):
        problem = path_problem(variant)
        if "\\" in variant or problem in ("nul", "absolute"):  # `\` too, which prompts may read as `/`
            raise InputError(f"invalid subfolder {subfolder!r}")
        if problem == "parent":
            raise ForbiddenPathError(f"subfolder {subfolder!r} leaves its folder")
    return [check_part(part, "subfolder") for part in relative_parts(subfolder, what="subfolder")]


def contained(root: Path, path: Path) -> Path:
    """`path` with symlinks resolved; 403 if that lands outside `root` (also resolved)."""
    real = real_path_inside(root, path)
    if real is None:
        raise ForbiddenPathError(_ESCAPE_MESSAGE)
    return real


def root_for(folders: dict[str, Path], folder_type: str | None, default: str) -> tuple[Path, str]:
    """The folder a `type` parameter names (`default` when absent); 400 for anything else."""
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
    """The folder an upload goes to, created if needed, proven to sit inside `root` (its real path).

    A symlinked subfolder pointing elsewhere is refused (403) before anything is created through it.
    """
    parts = check_subfolder(subfolder)
    try:
        folder = make_folder_inside(root, parts, what="subfolder")
    except InputError:  # the parts are clean: only a symlink escape is left
        raise ForbiddenPathError(_ESCAPE_MESSAGE) from None
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"subfolder {subfolder!r}: a file is in the way of that folder") from None
    return contained(root, folder)
