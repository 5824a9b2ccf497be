"""ComfyUI's numbered file names, shared by SaveImage and the CLI: counters, and never overwriting."""

from __future__ import annotations

from pathlib import Path

import torch

from zturbo import generate
from zturbo.generate import Generated, save_generated
from zturbo.output.metadata import ModelFiles
from zturbo.output.naming import SAVE_IMAGE_PATTERN, save_target, write_numbered
from zturbo.output.png import read_png_text
from zturbo.request import GenerationRequest


def test_counter_is_one_more_than_the_highest(tmp_path: Path) -> None:
    for name in ("a_00007_.png", "a_00003_.jpg", "a_x_.png", "ab_00099_.png", "a_00100.png"):
        (tmp_path / name).write_bytes(b"")
    assert save_target(tmp_path, "a", 1, 1).counter == 8
    assert save_target(tmp_path, "a", 1, 1, trailing=".").counter == 101


def test_names_taken_after_the_counter_was_computed_are_skipped(tmp_path: Path) -> None:
    target = save_target(tmp_path, "sub/a", 1, 1)
    (tmp_path / "sub" / "a_00001_.png").write_bytes(b"theirs")  # another process, meanwhile
    written = write_numbered(["x", "y"], target, SAVE_IMAGE_PATTERN, lambda i, item, p: p.write_text(item))
    assert [p.name for p in written] == ["a_00002_.png", "a_00003_.png"]
    assert (tmp_path / "sub" / "a_00001_.png").read_bytes() == b"theirs"


def test_cli_save_never_overwrites(tmp_path: Path, monkeypatch) -> None:
    real_save_png = generate.save_png
    calls: list[Path] = []

    def racing_save_png(image, path, text):  # another process writes the next name while we save
        if not calls:
            (tmp_path / "zturbo_00006_.png").write_bytes(b"theirs")
        calls.append(path)
        return real_save_png(image, path, text)

    monkeypatch.setattr(generate, "save_png", racing_save_png)
    (tmp_path / "zturbo_00004_.png").write_bytes(b"old")
    request = GenerationRequest("cat", width=16, height=16, batch=2)
    result = Generated(torch.rand(2, 16, 16, 3), torch.zeros(2, 16, 2, 2), request)
    files = ModelFiles("dit.safetensors", "te.safetensors", "vae.safetensors")
    saved = save_generated(result, files, tmp_path)
    assert [p.name for p in saved] == ["zturbo_00005_.png", "zturbo_00007_.png"]
    assert (tmp_path / "zturbo_00006_.png").read_bytes() == b"theirs"
    assert "Batch pos: 1" in read_png_text(saved[1])["parameters"]


_SAVER = """
import sys, time
from pathlib import Path
from zturbo.output.naming import SAVE_IMAGE_PATTERN, save_target, write_numbered

def write(_index, tag, path):
    time.sleep(0.002)  # the time an encoder takes: when a second process may pick the same name
    path.write_text(tag)

folder, who, count, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
time.sleep(max(0.0, start - time.time()))
for i in range(count):
    write_numbered([f"{who}-{i}"], save_target(folder, "race", 8, 8), SAVE_IMAGE_PATTERN, write)
"""


def test_processes_saving_into_one_folder_never_overwrite(tmp_path: Path) -> None:
    """Several processes through the save path SaveImage and the CLI share (counter from the folder,
    then numbered names), all at once."""
    import subprocess
    import sys
    import time

    processes, count = 3, 40
    start = time.time() + 3  # all start together, after their (light) imports
    runs = [
        subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path), str(p), str(count), str(start)])
        for p in range(processes)
    ]
    assert [run.wait(timeout=300) for run in runs] == [0] * processes
    files = sorted(tmp_path.iterdir())
    assert len(files) == processes * count
    assert all(p.name.startswith("race_") for p in files), [p.name for p in files]  # no temp files left
    tags = sorted(p.read_text() for p in files)
    assert tags == sorted(f"{p}-{i}" for p in range(processes) for i in range(count))
