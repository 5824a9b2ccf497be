"""CPU microbenchmark: PNG encoding of a 1024² RGB image, PIL (the old path) against `encode_png`.

    python benchmarks/png_encode.py [--repeats 15] [--image some.png ...]

Images: `smooth` (gradients + small noise, like a photo's residuals) and `noise` (uniform random bytes,
the incompressible worst case), plus any `--image` files (cropped or mirror-padded to 1024²). Rows: PIL level 4
(how save_png wrote before), ours at levels 1 and 4 with one worker and the default pool, ours with
zlib's default strategy (LZ77 + Huffman, the textbook choice) instead of run-length, and the whole
`save_png` call (float tensor → file) old and new. Time: median (and best) of --repeats after one warm-up call.
Prints a table (ms, KiB, size and time ratio vs PIL) and writes
benchmarks/results/<date>-cpu-png_encode.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, PngImagePlugin

from zturbo.output.png import default_workers, encode_png, save_png

SIZE = 1024


def smooth_image(seed: int = 0) -> np.ndarray:
    """Gradients plus small Gaussian noise (σ = 2 levels)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    rgb = np.stack(
        [
            128 + 100 * np.sin(x / 97 + y / 211),
            128 + 90 * np.cos(y / 150 - x / 300),
            127 * (x / SIZE + y / SIZE),
        ],
        axis=-1,
    )
    rgb += np.random.default_rng(seed).normal(0, 2.0, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def noise_image(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def file_image(path: Path) -> np.ndarray:
    """A real picture cropped to 1024², mirror-padded if smaller (a plain tile would repeat pixels
    exactly within deflate's 32 KiB window, which LZ77 exploits and no photo offers)."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    pad = ((0, max(0, SIZE - rgb.shape[0])), (0, max(0, SIZE - rgb.shape[1])), (0, 0))
    return np.ascontiguousarray(np.pad(rgb, pad, mode="symmetric")[:SIZE, :SIZE])


def pil_png(array: np.ndarray, level: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def old_save_png(image: torch.Tensor, path: Path, text: dict[str, str]) -> None:
    """save_png as it was: clip(255·x) → PIL, level 4, temp file + rename."""
    array = np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    tmp = path.with_name(".tmp-" + path.name)
    Image.fromarray(array).save(tmp, format="PNG", pnginfo=info, compress_level=4)
    os.replace(tmp, path)


def time_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median and best of `repeats` calls after a warm-up (the best shows what a quiet machine does)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": statistics.median(times), "ms_min": min(times)}


def bench_image(name: str, array: np.ndarray, repeats: int, folder: Path) -> list[dict]:
    """Every variant on one image; each file is checked to decode to the same pixels."""
    workers = default_workers()
    variants: list[tuple[str, int, int | None, Callable[[], bytes]]] = [
        ("PIL (old save_png)", 4, 1, lambda: pil_png(array, 4)),
    ]
    for level in (1, 4):
        for w in (1, None):
            variants.append(
                ("ours rle", level, w, lambda level=level, w=w: encode_png(array, None, level, w))
            )
    for w in (1, None):
        variants.append(
            (
                "ours deflate (Z_DEFAULT_STRATEGY)",
                4,
                w,
                lambda w=w: encode_png(array, None, 4, w, strategy=zlib.Z_DEFAULT_STRATEGY),
            )
        )
    rows = []
    for label, level, w, fn in variants:
        data = fn()
        with Image.open(io.BytesIO(data)) as img:
            assert np.array_equal(np.asarray(img), array), label
        rows.append(
            {
                "image": name,
                "encoder": label,
                "level": level,
                "workers": w or workers,
                **time_ms(fn, repeats),
                "bytes": len(data),
            }
        )
    tensor = torch.from_numpy(array.astype(np.float32) / 255.0)
    text = {"prompt": json.dumps({"6": {"inputs": {"text": "a red fox in the snow"}}})}
    for label, fn in (
        ("tensor → file, PIL (old save_png)", lambda: old_save_png(tensor, folder / "old.png", text)),
        ("tensor → file, save_png", lambda: save_png(tensor, folder / "new.png", text)),
    ):
        path = folder / ("old.png" if "PIL" in label else "new.png")
        fn()
        row = {"image": name, "encoder": label, "level": 4, "workers": 1 if "PIL" in label else workers}
        rows.append(row | time_ms(fn, repeats) | {"bytes": path.stat().st_size})
    for r in rows:  # compare with PIL doing the same job (encode in memory, or tensor → file)
        ref = rows[-2] if "tensor" in r["encoder"] else rows[0]
        r["size_vs_pil"] = r["bytes"] / ref["bytes"]
        r["time_vs_pil"] = r["ms"] / ref["ms"]
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"{'image':<14}{'encoder':<36}{'level':>6}{'workers':>8}{'ms':>9}{'min ms':>8}{'KiB':>8}{'size/PIL':>10}{'time/PIL':>10}"
    )
    for r in rows:
        print(
            f"{r['image']:<14}{r['encoder']:<36}{r['level']:>6}{r['workers']:>8}{r['ms']:>9.1f}{r['ms_min']:>8.1f}"
            f"{r['bytes'] / 1024:>8.0f}{r['size_vs_pil']:>10.3f}{r['time_vs_pil']:>10.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--image", type=Path, action="append", default=[], help="also bench this picture")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    images = {"smooth": smooth_image(), "noise": noise_image()}
    images |= {path.stem[:13]: file_image(path) for path in args.image}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, array in images.items():
            rows += bench_image(name, array, args.repeats, Path(tmp))
    print_table(rows)
    today = dt.date.today().isoformat()
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{today}-cpu-png_encode.json"
    data = {
        "date": today,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "default_workers": default_workers(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "size": [SIZE, SIZE, 3],
        "repeats": args.repeats,
        "rows": rows,
    }
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
