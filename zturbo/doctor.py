"""`zturbo doctor`: does this install work, before a 20 GB download?

Checks, each one line (`[ok]`, `[!!]` failed, `[--]` not there yet):

1. torch imports, and which build it is (CUDA, ROCm or CPU; a CUDA build on a machine without a GPU is
   pointed at the much smaller CPU build);
2. the device `--device` picks, with its name and memory;
3. the models folder: which files `generate` would use, or what is missing (not a failure: that is
   what `zturbo models pull` is for);
4. a self-test: a full generate (load, encode, sample, decode, save a PNG) on a tiny random-weight model
   written to a temporary folder. Its image is noise (random weights), and is labelled so.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from zturbo import __version__
from zturbo.errors import ZTurboError

Echo = Callable[[str], None]
CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
SELF_TEST_LABEL = "self-test image (random weights: noise, not a picture)"


def check_torch(echo: Echo) -> bool:
    try:
        import torch
    except Exception as exc:  # a broken install shows up as any exception
        echo(f"[!!] torch does not import: {exc}")
        return False
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda} build"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip} build"
    else:
        build = "CPU build"
    echo(f"[ok] torch {torch.__version__} ({build})")
    if torch.version.cuda and not torch.cuda.is_available():
        echo(
            "     no CUDA GPU is visible to it; on a machine without an NVIDIA GPU the CPU build is much "
            f"smaller: {CPU_TORCH}"
        )
    return True


def check_device(echo: Echo, device: str) -> str | None:
    """The device `device` resolves to ("cuda", "cpu", ...), or None if it is not available."""
    import os

    import torch

    from zturbo.runtime.device import pick_device

    try:
        picked = pick_device(device)
    except ZTurboError as exc:
        echo(f"[!!] device {device}: {exc}")
        return None
    if picked.type == "cuda":
        props = torch.cuda.get_device_properties(picked)
        bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16: use --dtype fp32"
        echo(f"[ok] device {picked}: {props.name}, {props.total_memory / 2**30:.1f} GiB, {bf16}")
    elif picked.type == "mps":
        echo(f"[ok] device mps: Apple GPU ({platform.machine()})")
    else:
        echo(
            f"[ok] device cpu: {os.cpu_count()} cores ({platform.machine()}); a 1024x1024 image takes "
            "minutes on a CPU"
        )
    return str(picked)


def check_models(echo: Echo, models_dir: Path | None) -> None:
    from zturbo.checkpoints.detect import DIT, KIND_LABELS, TEXT_ENCODER, VAE
    from zturbo.checkpoints.layout import default_models_dir, resolve_models
    from zturbo.errors import MissingModelError

    folder = (models_dir or default_models_dir()).resolve()
    try:
        paths = resolve_models(models_dir)
    except MissingModelError:
        echo(f"[--] models folder {folder}: model files missing (`zturbo models` says which);")
        echo("     `zturbo models pull` downloads them (about 20 GB)")
        return
    except ZTurboError as exc:
        echo(f"[!!] models folder {folder}: {exc}")
        return
    names = ", ".join(
        f"{paths.component(kind).name} ({KIND_LABELS[kind]})" for kind in (DIT, TEXT_ENCODER, VAE)
    )
    echo(f"[ok] models folder {folder}: generate uses {names}")


def self_test(echo: Echo, device: str) -> bool:
    """A full generate on a tiny random-weight model in a temporary folder; its PNG is kept there."""
    root = Path(tempfile.mkdtemp(prefix="zturbo-selftest-"))
    started = time.perf_counter()
    try:
        saved = _generate_tiny(root, device)
    except Exception as exc:  # any failure here is what the self-test is for: report it, in one line
        echo(f"[!!] self-test failed: {type(exc).__name__}: {exc}")
        echo(f"     (its files are in {root}; `zturbo -v doctor` logs more)")
        return False
    finally:
        shutil.rmtree(root / "models", ignore_errors=True)
    seconds = time.perf_counter() - started
    echo(f"[ok] self-test: a full generate on a tiny random-weight model took {seconds:.1f} s on {device}")
    echo(f"     {SELF_TEST_LABEL}: {saved}")
    return True


def _generate_tiny(root: Path, device: str) -> Path:
    import torch

    from zturbo.checkpoints.layout import resolve_models
    from zturbo.engine import Engine
    from zturbo.generate import model_files, run_request, save_generated
    from zturbo.output.png import read_png_text
    from zturbo.request import GenerationRequest
    from zturbo.runtime.settings import EngineSettings
    from zturbo.testing.synthetic import TINY, write_comfy_models

    write_comfy_models(root / "models", TINY, dtype=torch.bfloat16)
    paths = resolve_models(root / "models")
    request = GenerationRequest("zturbo self-test", width=64, height=64, steps=2, seed=1)
    result = run_request(Engine(EngineSettings(device)), paths, request)
    if not torch.isfinite(result.images).all():
        raise ZTurboError("the image holds NaN or infinite values")
    (saved,) = save_generated(result, model_files(paths, root / "models"), root, prefix="zturbo_selftest")
    if "Version: zturbo" not in read_png_text(saved).get("parameters", ""):
        raise ZTurboError(f"{saved}: the PNG's metadata did not read back")
    return saved


def run_doctor(echo: Echo, *, models_dir: Path | None, device: str = "auto", generate: bool = True) -> bool:
    """All checks (`generate`: with the self-test); False if one failed (missing model files are not
    a failure)."""
    system = f"{platform.system()} {platform.machine()}"
    echo(f"zturbo {__version__}, Python {platform.python_version()} on {system}")
    if not check_torch(echo):
        return False
    picked = check_device(echo, device)
    check_models(echo, models_dir)
    if picked is None:
        return False
    return self_test(echo, picked) if generate else True
