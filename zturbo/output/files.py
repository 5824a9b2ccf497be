"""Writing files safely: whole or not at all, with the user's permissions, never over another file.

* A file is first written whole under a hidden temporary name in its folder, created with mode 0666
  so that the process umask applies (as for any file a program creates; `tempfile.mkstemp` would make
  it 0600, unreadable to the user's other accounts and services).
* `atomic_write` then renames it over the target (readers never see a partial file).
* `publish_new` instead gives it the first of several names that is still free, atomically: it
  hard-links the temporary file to the name (a link fails if the name exists, on every OS), or, where the
  filesystem has no hard links (FAT, exFAT, some network shares), first claims the name with an
  exclusive create (`O_CREAT | O_EXCL`) and renames the finished file over its own claim. Either way two
  processes saving into one folder at the same moment never overwrite each other's files.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows only
TEMP_PREFIX = ".tmp-"


def temp_name(folder: Path, suffix: str = "") -> Path:
    """A hidden, practically unique name in `folder` for a file being written."""
    return folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}{suffix}"


def create_new(path: Path) -> int:
    """Open a new file for writing (mode 0666 less the umask); FileExistsError if `path` exists."""
    return os.open(path, _CREATE_NEW, 0o666)


def write_temp(folder: Path, write: Callable[[Path], object], suffix: str = "") -> Path:
    """A new temporary file in `folder`, filled by `write(path)`; removed again if `write` fails.

    The file exists (empty, with the umask's permissions) before `write` is called, so nobody else can
    take its name; `write` may reopen it or replace it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = temp_name(folder, suffix)
        try:
            os.close(create_new(tmp))
            break
        except FileExistsError:  # 64 random bits taken already: draw again
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            f.write(data)

    return write


def atomic_write(path: Path, data: bytes) -> Path:
    """Write `data` to `path`, replacing it if it exists: readers never see a partial file."""
    tmp = write_temp(path.parent, _write_bytes(data), path.suffix)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _no_hard_links(exc: OSError) -> bool:
    """The filesystem (or OS) cannot hard-link, as opposed to the name being taken or the disk failing."""
    unsupported = {errno.EPERM, errno.EACCES, errno.EXDEV, errno.EMLINK, errno.ENOSYS}
    unsupported |= {getattr(errno, name) for name in ("ENOTSUP", "EOPNOTSUPP") if hasattr(errno, name)}
    # Windows on FAT/exFAT or some shares: ERROR_INVALID_FUNCTION (1), ERROR_NOT_SUPPORTED (50)
    return exc.errno in unsupported or getattr(exc, "winerror", None) in (1, 50)


def _claim_and_replace(tmp: Path, path: Path) -> bool:
    """Without hard links: claim `path` exclusively, then rename the finished file over the claim."""
    try:
        os.close(create_new(path))
    except FileExistsError:
        return False
    try:
        os.replace(tmp, path)
    except BaseException:
        path.unlink(missing_ok=True)  # our own empty claim
        raise
    return True


def publish_new(tmp: Path, names: Iterable[Path]) -> Path:
    """Give the finished file `tmp` the first name of `names` that is free, atomically; return it.

    Names taken (by anyone, at any moment up to the link) are skipped; `tmp` is gone afterwards. If
    linking is not supported, the exclusive-create claim is used for this and later names.
    """
    links = True
    try:
        for path in names:
            if links:
                try:
                    os.link(tmp, path)
                    return path
                except FileExistsError:
                    continue
                except OSError as exc:
                    if os.path.lexists(path):  # taken, whatever the error says
                        continue
                    if not _no_hard_links(exc):
                        raise
                    links = False
            if _claim_and_replace(tmp, path):
                return path
        raise FileExistsError(errno.EEXIST, "every candidate name is taken", str(tmp))
    finally:
        tmp.unlink(missing_ok=True)  # after a link, the second name; after a rename, nothing
