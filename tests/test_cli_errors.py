"""`zturbo generate` and friends on bad input and failing output folders: one line, no traceback, and
nothing lost (issue 12, defects 3 and 5)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

import zturbo.engine
from zturbo.cli import app
from zturbo.errors import ZTurboError
from zturbo.output.png import read_png_text

runner = CliRunner()
SMALL = ("--width", "32", "--height", "32", "--steps", "1", "--seed", "3", "--device", "cpu")


def error_of(*args: str) -> str:
    """The one-line message `zturbo` prints for a ZTurboError (anything else would be a traceback)."""
    result = runner.invoke(app, list(args))
    assert isinstance(result.exception, ZTurboError), (result.exception, result.output)
    return str(result.exception)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model is loaded."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(zturbo.engine.Engine, "load_all", refuse)


def test_out_naming_a_file_fails_before_any_model_loads(tiny_models, tmp_path, no_loading):
    taken = tmp_path / "a.png"
    taken.write_bytes(b"x")
    message = error_of("generate", "cat", *SMALL, "--models-dir", str(tiny_models), "--out", str(taken))
    assert message == f"--out {taken}: is a file; expected a folder to save images in"
    message = error_of(
        "generate", "cat", *SMALL, "--models-dir", str(tiny_models), "--out", str(taken / "sub")
    )
    assert message == f"--out {taken / 'sub'}: a part of this path is a file, not a folder"
    assert taken.read_bytes() == b"x"


def _read_only(folder: Path, monkeypatch) -> None:
    """Make `folder` refuse new files as a read-only filesystem does (root ignores chmod)."""
    from zturbo.output import files

    real = files.create_new

    def create_new(path: Path) -> int:
        if Path(path).parent.resolve() == folder.resolve():
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path)

    monkeypatch.setattr(files, "create_new", create_new)


def test_read_only_out_fails_before_any_model_loads(tiny_models, tmp_path, monkeypatch, no_loading):
    out = tmp_path / "ro"
    out.mkdir()
    _read_only(out, monkeypatch)
    message = error_of("generate", "cat", *SMALL, "--models-dir", str(tiny_models), "--out", str(out))
    assert message == f"--out {out}: cannot write there (Read-only file system)"


def test_a_save_that_fails_after_generating_keeps_the_image(tiny_models, tmp_path, monkeypatch):
    import tempfile

    import zturbo.generate

    out = tmp_path / "out"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-temp"))
    monkeypatch.setattr(zturbo.generate, "check_output_folder", lambda folder, option="--out": folder)
    _read_only(out, monkeypatch)  # the folder turns read-only while the image is made
    out.mkdir()
    message = error_of("generate", "cat", *SMALL, "--models-dir", str(tiny_models), "--out", str(out))
    kept = tmp_path / "system-temp" / "zturbo-unsaved" / "zturbo_00001_.png"
    assert message == f"could not save into {out} (Read-only file system); the image is kept at {kept}"
    assert "Seed: 3" in read_png_text(kept)["parameters"]
    assert list(out.iterdir()) == []


def test_run_checks_its_output_folder_first(tmp_path):
    (tmp_path / "w.json").write_text("{}")
    taken = tmp_path / "file"
    taken.write_bytes(b"")
    assert "is a file" in error_of("run", str(tmp_path / "w.json"), "--out", str(taken), "--device", "cpu")


def test_width_zero_is_refused_not_replaced(tiny_models, tmp_path, no_loading):
    args = ("--models-dir", str(tiny_models), "--out", str(tmp_path), "--device", "cpu")
    assert error_of("generate", "cat", "--width", "0", *args).startswith("width must be a multiple of 16")
    assert "(got 0; try 16)" in error_of("generate", "cat", "--height", "0", *args)
    assert "--aspect" in error_of("generate", "cat", "--megapixels", "2", *args)  # not silently ignored


def test_bad_sampler_and_unsafe_fp16_fail_before_loading(tiny_models, tmp_path, no_loading):
    args = ("--models-dir", str(tiny_models), "--out", str(tmp_path), "--device", "cpu")
    assert "choose one of: euler" in error_of("generate", "cat", "--sampler", "eulr", *args)
    # fp16 is the fp16-safe path (issue 17); only diffusers' class, which has none, refuses it.
    assert "no fp16-safe path" in error_of("generate", "cat", "--dtype", "fp16", "--speed", "reference", *args)


def test_help_names_the_valid_values():
    from zturbo.cli import SAMPLER_NAMES, SCHEDULER_NAMES
    from zturbo.sampling.samplers import SAMPLERS
    from zturbo.sampling.schedules import SCHEDULERS

    assert tuple(SAMPLERS) == SAMPLER_NAMES and tuple(SCHEDULERS) == SCHEDULER_NAMES
    # rich sizes the help from COLUMNS (CliRunner's terminal_width does not reach it): at 80 columns a
    # long sampler name is broken across lines
    text = " ".join(runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).stdout.split())
    for name in (*SAMPLER_NAMES, *SCHEDULER_NAMES, "Sampling steps", "Timestep shift"):
        assert name in text, name
    dtype_help = text.split("--dtype", 1)[1].split("--")[0]
    assert "fp16-safe path" in dtype_help and "black" not in dtype_help  # offered, and explained


def test_version():
    from zturbo import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"zturbo {__version__}"


def test_bench_without_a_gpu_says_so(monkeypatch):
    import torch

    import zturbo.bench.cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(zturbo.bench.cli, "main", lambda *a, **k: pytest.fail("bench started"))
    assert "zturbo bench needs a CUDA GPU" in error_of("bench", "--sizes", "512x512")


def test_cpu_runs_speak_of_no_gpu(tiny_models, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    result = runner.invoke(
        app, ["-v", "generate", "cat", *SMALL, "--models-dir", str(tiny_models), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "VRAM" in m or "on the GPU" in m], messages
    assert "running on the CPU: every model stays in RAM (no GPU memory plan)" in messages
