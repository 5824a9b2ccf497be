"""Where saved images go: ComfyUI's numbered file names, shared by SaveImage-style nodes and the CLI.

Names follow ComfyUI (`folder_paths.get_save_image_path`): the prefix may hold `/` subfolders and
`%width%`, `%height%`, `%year%`... `%date:yyyy-MM-dd%` tokens; the counter is one more than the
highest one already used by that prefix. Unlike ComfyUI, which only checks the normalised path, any
`..`, absolute path or symlink escape is refused outright (`zturbo.paths`): a prompt must never write
outside the folder. A name already taken is skipped, so a save never overwrites a file: each file is
written whole under a temporary name, then given the first free numbered name atomically
(`files.publish_new`), so processes saving into one folder at once never overwrite each other.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from zturbo.output.files import publish_new, write_temp
from zturbo.paths import ensure_inside, make_folder_inside, relative_parts

SAVE_IMAGE_PATTERN = "{stem}_{n:05}_.png"  # SaveImage's (and the CLI's) `{prefix}_{counter:05}_.png`

_DATE_TOKEN = re.compile(r"%date:([^%]+)%")
_DATE_PARTS = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")

T = TypeVar("T")


@dataclass(frozen=True)
class SaveTarget:
    """A resolved save location: the folder to write in, the file stem and the first free counter."""

    folder: Path
    stem: str
    counter: int
    subfolder: str


def _format_date(pattern: str, now: time.struct_time) -> str:
    values = {
        "yyyy": str(now.tm_year),
        "yy": str(now.tm_year % 100).zfill(2),
        "MM": str(now.tm_mon).zfill(2),
        "M": str(now.tm_mon),
        "dd": str(now.tm_mday).zfill(2),
        "d": str(now.tm_mday),
        "hh": str(now.tm_hour).zfill(2),
        "h": str(now.tm_hour),
        "mm": str(now.tm_min).zfill(2),
        "m": str(now.tm_min),
        "ss": str(now.tm_sec).zfill(2),
        "s": str(now.tm_sec),
    }
    return _DATE_PARTS.sub(lambda m: values[m.group(0)], pattern)


def substitute_tokens(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """Replace ComfyUI's prefix tokens (the frontend does %date:…% for UI users; we do it for API ones)."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    prefix = _DATE_TOKEN.sub(lambda m: _format_date(m.group(1), now), prefix)
    tokens = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": str(now.tm_mon).zfill(2),
        "%day%": str(now.tm_mday).zfill(2),
        "%hour%": str(now.tm_hour).zfill(2),
        "%minute%": str(now.tm_min).zfill(2),
        "%second%": str(now.tm_sec).zfill(2),
    }
    for token, value in tokens.items():
        prefix = prefix.replace(token, value)
    return prefix


def _next_counter(folder: Path, stem: str, trailing: str) -> int:
    """1 + the highest counter among `{stem}_{digits}{trailing}...` files (ComfyUI's map_filename)."""
    highest = 0
    if folder.is_dir():
        lead = f"{stem}_"
        for entry in os.listdir(folder):
            if os.path.normcase(entry[: len(lead)]) != os.path.normcase(lead):
                continue
            digits = re.match(r"\d+", entry[len(lead) :])
            if digits and entry[len(lead) + len(digits.group(0)) :].startswith(trailing):
                highest = max(highest, int(digits.group(0)))
    return highest + 1


def save_target(root: Path, prefix: str, width: int, height: int, *, trailing: str = "_") -> SaveTarget:
    """Resolve a filename prefix under `root`, creating its subfolder; refuses any escape.

    `trailing` is what follows the counter in the names that count (`_` for SAVE_IMAGE_PATTERN).
    """
    prefix = substitute_tokens(prefix, width, height)
    what = f"filename prefix {prefix!r}"
    parts = relative_parts(prefix, what=what)
    stem = parts[-1] if parts else ""
    sub_parts = parts[:-1]
    folder = make_folder_inside(root, sub_parts, what=what)
    return SaveTarget(folder, stem, _next_counter(folder, stem, trailing), "/".join(sub_parts))


def _numbered_names(
    target: SaveTarget, pattern: str, stem: str, start: int, tried: list[int]
) -> Iterator[Path]:
    """`pattern`'s names from counter `start` on (each checked to stay in the folder); `tried` records
    the counters handed out."""
    for n in itertools.count(start):
        tried.append(n)
        name = target.folder / pattern.format(stem=stem, n=n)
        if not os.path.lexists(name):  # taken names are skipped anyway; this spares a symlink check
            yield ensure_inside(target.folder, name, what="output file")


def write_numbered(
    items: Iterable[T],
    target: SaveTarget,
    pattern: str,
    write: Callable[[int, T, Path], object],
) -> list[Path]:
    """Write each item under `pattern` (`{stem}`, `{n}`: counter) with `write(index, item, path)`.

    `write` writes the whole file at `path`, a temporary name in the target folder (it may replace
    that file); the file then takes the first free numbered name from the counter on, claimed
    atomically, so a save never overwrites a file, even one another process is writing at that very
    moment. `%batch_num%` in the stem becomes the item's index.
    """
    paths, counter = [], target.counter
    suffix = Path(pattern.format(stem="", n=0)).suffix
    for index, item in enumerate(items):
        stem = target.stem.replace("%batch_num%", str(index))
        tmp = write_temp(target.folder, functools.partial(write, index, item), suffix)
        tried: list[int] = []
        paths.append(publish_new(tmp, _numbered_names(target, pattern, stem, counter, tried)))
        counter = tried[-1] + 1
    return paths
