"""`zturbo.paths`: the one home of path safety for prompts and HTTP clients."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zturbo.errors import InputError
from zturbo.paths import (
    ensure_inside,
    make_folder_inside,
    path_problem,
    relative_parts,
    safe_join,
    split_annotation,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png [output]", ("a.png", "output")),
        ("sub/a b.png [input]", ("sub/a b.png", "input")),
        ("a.png [temp]", ("a.png", "temp")),
        ("a.png  [output]", ("a.png ", "output")),  # one space belongs to the annotation, as in ComfyUI
        ("a.png[output]", ("a.png[output]", None)),  # no space: not an annotation
        ("a.png [models]", ("a.png [models]", None)),  # not a folder type
        ("a.png [output] ", ("a.png [output] ", None)),
        ("a.png", ("a.png", None)),
    ],
)
def test_split_annotation_follows_comfyui(name: str, expected: tuple[str, str | None]) -> None:
    assert split_annotation(name) == expected


def test_relative_parts() -> None:
    assert relative_parts("a//b/./c\\d", what="x") == ("a", "b", "c", "d")
    assert relative_parts("", what="x") == ()
    with pytest.raises(InputError, match=r"^x 'a/../../b' contains '..'"):
        relative_parts("a/../../b", what="x")
    assert path_problem("a/../../b") == path_problem("..\\x") == "parent"
    for bad, problem in [("/etc", "absolute"), ("C:/x", "absolute"), ("c:x", "absolute"), ("a\x00b", "nul")]:
        assert path_problem(bad) == problem
        with pytest.raises(InputError):
            relative_parts(bad, what="x")
    assert path_problem("sub/a.png") is None


def test_symlinks_out_of_the_folder_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    os.symlink(root, root / "self")
    assert safe_join(root, "self/a.png", what="name") == root / "self" / "a.png"
    with pytest.raises(InputError, match=r"name resolves outside its folder \("):
        ensure_inside(root, root / "link" / "a.png", what="name")
    with pytest.raises(InputError):
        make_folder_inside(root, ("link", "deeper"), what="prefix")
    assert list(outside.iterdir()) == []  # refused before anything was created through the link
    assert make_folder_inside(root, ("new", "sub"), what="prefix").is_dir()
