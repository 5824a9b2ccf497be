"""Whole files with the user's permissions, and names claimed atomically (hard links or O_EXCL)."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from zturbo.output import files
from zturbo.output.naming import SAVE_IMAGE_PATTERN, save_target, write_numbered
from zturbo.output.png import save_png


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_files_get_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = save_png(np.zeros((2, 2, 3), np.uint8), tmp_path / "a.png")
        (numbered,) = write_numbered(
            [0], save_target(tmp_path, "b", 2, 2), SAVE_IMAGE_PATTERN, lambda _i, _x, p: p.write_bytes(b"x")
        )
        os.umask(0o077)
        private = files.atomic_write(tmp_path / "c.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(numbered.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


@pytest.mark.parametrize("error", [errno.EPERM, getattr(errno, "ENOTSUP", errno.EPERM), errno.EXDEV])
def test_without_hard_links_names_are_claimed_exclusively(tmp_path: Path, monkeypatch, error) -> None:
    def no_links(src, dst):
        raise OSError(error, "links not supported here")

    monkeypatch.setattr(files.os, "link", no_links)
    (tmp_path / "a_00002_.png").write_bytes(b"theirs")
    target = save_target(tmp_path, "a", 1, 1)
    assert target.counter == 3
    (tmp_path / "a_00003_.png").write_bytes(b"raced")  # another process, meanwhile
    save = lambda _i, data, p: p.write_bytes(data)  # noqa: E731
    written = write_numbered([b"1", b"2"], target, SAVE_IMAGE_PATTERN, save)
    assert [p.name for p in written] == ["a_00004_.png", "a_00005_.png"]
    assert [p.read_bytes() for p in written] == [b"1", b"2"]
    assert (tmp_path / "a_00003_.png").read_bytes() == b"raced"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a_0000{n}_.png" for n in range(2, 6)]


def test_publish_never_replaces_and_cleans_up(tmp_path: Path) -> None:
    (tmp_path / "x1").write_bytes(b"old")
    tmp = files.write_temp(tmp_path, lambda p: p.write_bytes(b"new"))
    assert files.publish_new(tmp, [tmp_path / "x1", tmp_path / "x2"]) == tmp_path / "x2"
    assert (tmp_path / "x1").read_bytes() == b"old" and (tmp_path / "x2").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x1", "x2"]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def fail(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "disk full")

    with pytest.raises(OSError, match="disk full"):
        write_numbered([0], save_target(tmp_path, "a", 1, 1), SAVE_IMAGE_PATTERN, lambda _i, _x, p: fail(p))
    assert list(tmp_path.iterdir()) == []
