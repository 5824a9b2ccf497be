"""Write PNGs with text chunks, fast and atomically, and read the chunks back.

PIL's PNG writer spends 100–240 ms of CPU on a 1024² image (adaptive filtering row by row, then
single-threaded zlib), a large share of a sub-second image. `encode_png` is our own encoder:

* Paeth filtering is vectorised with numpy, a block of rows at a time (small enough to stay in cache);
* the filtered rows are cut into strips that are deflated in parallel threads (zlib releases the GIL),
  each strip a raw deflate stream ended by a full flush, so that their concatenation, framed by a zlib
  header and the Adler-32 of the whole stream, is one valid zlib stream (what pigz does);
* text chunks are tEXt when Latin-1 can hold them, else uncompressed UTF-8 iTXt, as Pillow's
  `PngInfo.add_text` writes them, so ComfyUI and PIL read them back (`Image.open(p).text`).
* deflate uses zlib's run-length strategy by default: on filtered photos it gives PIL's level-4 size
  in a quarter of PIL's time single-threaded (see `encode_png`).

Pixels are `clip(255·x, 0, 255)` truncated to uint8, exactly as ComfyUI saves them, so the decoded
pixels are identical; the file bytes are not (different filters and deflate settings).

A file is written to a temporary name in the target folder and renamed into place (`files.atomic_write`):
a crash never leaves a half-written image behind.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zturbo.errors import InputError
from zturbo.output.files import atomic_write

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels → grey, grey+alpha, RGB, RGBA
_MIN_STRIP_BYTES = 256 * 1024  # below this a strip is not worth a thread hand-off
_BLOCK_BYTES = 64 * 1024  # rows filtered per numpy pass: their int16 temporaries stay in L2
_ADLER_BASE = 65521

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def default_workers() -> int:
    """Threads used when `workers` is None: beyond 8 the strips get too small to pay."""
    return min(8, os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor:
    """One process-wide pool, created on first use: encoders share it instead of spawning threads."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="png-deflate")
        return _executor


# --------------------------------------------------------------------------------------------------
# Filtering


def _paeth(cur: np.ndarray, prev: np.ndarray, bpp: int, out: np.ndarray) -> None:
    """PNG filter 4 on a block of rows, branch-free (masks times differences: np.where is 4× slower).

    With a = left, b = up, c = up-left: the predictor is a if |b−c| ≤ |a−c| and |b−c| ≤ |a+b−2c|,
    else b if |a−c| ≤ |a+b−2c|, else c; the residual is cur − predictor, modulo 256.
    """
    x = cur.astype(np.int16)
    b = prev.astype(np.int16)
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    c = np.zeros_like(x)
    c[:, bpp:] = b[:, :-bpp]
    b -= c  # b − c: the distance of a from the estimate a + b − c
    a -= c  # a − c: the distance of b
    x -= c
    pc = np.abs(a + b)
    pa = np.abs(b)
    pb = np.abs(a)
    take_a = (pa <= pb) & (pa <= pc)
    take_b = (pb <= pc) & ~take_a
    x -= a * take_a
    x -= b * take_b
    np.copyto(out, x, casting="unsafe")  # int16 → uint8 wraps modulo 256, as the PNG spec wants


def _filter_block(cur: np.ndarray, prev: np.ndarray, bpp: int, out: np.ndarray, paeth: bool) -> None:
    """Filter rows `cur` (`prev`: the row above each) into `out`: filter-type byte, then residuals.

    Always Paeth: choosing per row by the minimum sum of absolute differences (libpng's and Pillow's
    heuristic) over all five filters cost 25% more time for the same size on photos (7% smaller only
    on smooth synthetic gradients). Stored (level 0) output is not compressed, so it is not filtered.
    """
    if paeth:
        out[:, 0] = 4
        _paeth(cur, prev, bpp, out[:, 1:])
    else:
        out[:, 0] = 0
        out[:, 1:] = cur


# --------------------------------------------------------------------------------------------------
# Deflate


def _adler32_combine(first: int, second: int, second_len: int) -> int:
    """Adler-32 of A+B from those of A and B (zlib's adler32_combine, which Python does not expose)."""
    rem = second_len % _ADLER_BASE
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    s1 = (a1 + a2 - 1) % _ADLER_BASE
    s2 = (b1 + b2 + rem * (a1 - 1)) % _ADLER_BASE
    return (s2 << 16) | s1


def _deflate_strip(
    rows: np.ndarray, start: int, stop: int, bpp: int, level: int, strategy: int, last: bool
) -> tuple[bytes, int, int]:
    """Filter and raw-deflate rows [start, stop): (deflate bytes, Adler-32 of the filtered bytes, their length).

    Each block is compressed as soon as it is filtered, while it is still in cache. A strip that is not
    the last ends with a full flush (byte-aligned, no final bit), so strips can simply be concatenated.
    """
    row_bytes = rows.shape[1]
    block_rows = max(1, _BLOCK_BYTES // row_bytes)
    buffer = np.empty((min(block_rows, stop - start), row_bytes + 1), np.uint8)
    zero_row = np.zeros((1, row_bytes), np.uint8)
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
    parts = []
    adler = 1
    for first in range(start, stop, block_rows):
        end = min(first + block_rows, stop)
        cur = rows[first:end]
        prev = rows[first - 1 : end - 1] if first else np.concatenate([zero_row, rows[: end - 1]])
        out = buffer[: end - first]
        _filter_block(cur, prev, bpp, out, paeth=level > 0)
        # out.data (a memoryview of the same bytes): numpy's stubs declare the buffer protocol only on 3.12+
        parts.append(deflate.compress(out.data))
        adler = zlib.adler32(out.data, adler)
    parts.append(deflate.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH))
    return b"".join(parts), adler, (stop - start) * (row_bytes + 1)


def _zlib_header(level: int, strategy: int) -> bytes:
    """CMF/FLG for a 32 KiB window; FLEVEL as zlib itself would write it (informational only)."""
    if level < 2 or strategy in (zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE):
        flevel = 0
    elif level < 6:
        flevel = 1
    elif level == 6:
        flevel = 2
    else:
        flevel = 3
    cmf, flg = 0x78, flevel << 6
    flg += 31 - (cmf * 256 + flg) % 31
    return bytes((cmf, flg))


def _strip_bounds(height: int, row_bytes: int, workers: int) -> list[tuple[int, int]]:
    """Equal row ranges, at most `workers` of them and none under _MIN_STRIP_BYTES (one if small)."""
    count = max(1, min(workers, height, (height * row_bytes) // _MIN_STRIP_BYTES))
    edges = [height * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _idat_parts(rows: np.ndarray, bpp: int, level: int, strategy: int, workers: int) -> list[bytes]:
    """The zlib stream of the filtered image, as pieces to be concatenated."""
    height, row_bytes = rows.shape
    bounds = _strip_bounds(height, row_bytes, workers)
    jobs = [
        (rows, start, stop, bpp, level, strategy, i == len(bounds) - 1)
        for i, (start, stop) in enumerate(bounds)
    ]
    futures: list[Future[tuple[bytes, int, int]]] = [_pool().submit(_deflate_strip, *job) for job in jobs[1:]]
    results = [_deflate_strip(*jobs[0])]  # the caller's thread does a strip too instead of waiting idle
    results += [f.result() for f in futures]
    adler = results[0][1]
    for _, strip_adler, length in results[1:]:
        adler = _adler32_combine(adler, strip_adler, length)
    return [_zlib_header(level, strategy), *(data for data, _, _ in results), struct.pack(">I", adler)]


# --------------------------------------------------------------------------------------------------
# Chunks


def _chunk(kind: bytes, *parts: bytes) -> bytes:
    """Length, type, data, CRC-32 of type + data."""
    crc = zlib.crc32(kind)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join((struct.pack(">I", sum(map(len, parts))), kind, *parts, struct.pack(">I", crc)))


def _text_chunk(key: str, value: str) -> bytes:
    """tEXt if both are Latin-1, else uncompressed iTXt (UTF-8): Pillow's `PngInfo.add_text` rule."""
    try:
        raw_key = key.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise InputError(f"PNG text key {key!r} must be Latin-1 text") from exc
    if not raw_key or b"\x00" in raw_key:
        raise InputError(f"PNG text key {key!r} must be non-empty and contain no NUL character")
    try:
        return _chunk(b"tEXt", raw_key, b"\x00", value.encode("latin-1"))
    except UnicodeEncodeError:
        # keyword, NUL, compression flag 0, method 0, empty language tag + NUL, empty translated key + NUL
        return _chunk(b"iTXt", raw_key, b"\x00\x00\x00\x00\x00", value.encode("utf-8"))


def encode_png(
    array: np.ndarray,
    text: dict[str, str] | None = None,
    level: int = 4,
    workers: int | None = None,
    *,
    strategy: int = zlib.Z_RLE,
) -> bytes:
    """PNG file bytes of an (H, W[, C]) uint8 or uint16 image; C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA.

    `level` is zlib's 0–9 (0 stores). `workers` strips are deflated in parallel (None: up to 8, one per
    core). `strategy` is zlib's. The default, run-length (Z_RLE), ignores the level (except 0): on
    Paeth-filtered photos it is as small as PIL's level 4 (which is deflate level 4 with Z_FILTERED)
    in less than half the time of deflate level 4, whose string matching finds little in photo
    residuals (benchmarks/png_encode.py). Z_DEFAULT_STRATEGY compresses flat artwork slightly better.
    """
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"PNG compression level must be an integer from 0 to 9, got {level!r}")
    if workers is None:
        workers = default_workers()
    elif workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _COLOR_TYPES:
        raise ValueError(f"expected an (H, W, C) image with C in 1–4, got shape {array.shape}")
    height, width, channels = array.shape
    if not (0 < height < 2**31 and 0 < width < 2**31):
        raise ValueError(f"PNG width and height must be 1 to 2³¹−1, got {width}×{height}")
    if array.dtype == np.uint8:
        depth, rows = 8, np.ascontiguousarray(array).reshape(height, width * channels)
    elif array.dtype == np.uint16:
        depth = 16  # big-endian samples, filtered byte-wise with bpp = 2 bytes × channels
        rows = np.ascontiguousarray(array, dtype=">u2").view(np.uint8).reshape(height, width * channels * 2)
    else:
        raise ValueError(f"PNG pixels must be uint8 or uint16, got {array.dtype}")
    bpp = channels * depth // 8
    header = struct.pack(">IIBBBBB", width, height, depth, _COLOR_TYPES[channels], 0, 0, 0)
    chunks = [_SIGNATURE, _chunk(b"IHDR", header)]
    chunks += [_text_chunk(key, value) for key, value in (text or {}).items()]
    chunks.append(_chunk(b"IDAT", *_idat_parts(rows, bpp, level, strategy, workers)))
    chunks.append(_chunk(b"IEND"))
    return b"".join(chunks)


# --------------------------------------------------------------------------------------------------
# Files


def _quantize8(array: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] → uint8 as ComfyUI does: clip(255·x, 0, 255), truncated (in place on a copy)."""
    scaled = array * np.float32(255.0)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(H, W, C) float tensor in [0, 1] → uint8 pixels, as ComfyUI's SaveImage computes them."""
    return _quantize8(image.detach().cpu().float().numpy())


def to_uint16(image: torch.Tensor) -> np.ndarray:
    """(H, W, C) float tensor in [0, 1] → uint16 pixels, rounded: clip(65535·x + 0.5, 0, 65535)."""
    return np.clip(65535.0 * image.detach().cpu().float().numpy() + 0.5, 0, 65535).astype(np.uint16)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(H, W, 3) float in [0, 1] → PIL image."""
    return Image.fromarray(to_uint8(image))


def _pixels(image: torch.Tensor | Image.Image | np.ndarray) -> np.ndarray:
    """Integer pixels of a float tensor/array in [0, 1] or a PIL image; integer arrays as they are."""
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "LA", "RGB", "RGBA", "I;16"):
            keeps_alpha = "A" in image.getbands() or "transparency" in image.info
            image = image.convert("RGBA" if keeps_alpha else "RGB")
        return np.asarray(image)
    if isinstance(image, torch.Tensor):
        return to_uint8(image)
    if np.issubdtype(image.dtype, np.floating):
        return _quantize8(image.astype(np.float32, copy=False))
    return image  # uint8/uint16 as they are; encode_png refuses other types


def save_png(
    image: torch.Tensor | Image.Image | np.ndarray,
    path: Path,
    text: dict[str, str] | None = None,
    level: int = 4,
) -> Path:
    """Save an 8-bit PNG (16-bit for uint16 arrays) atomically with text chunks (`parameters`, `prompt`, ...)."""
    return atomic_write(path, encode_png(_pixels(image), text, level))


def save_png16(image: torch.Tensor, path: Path, text: dict[str, str] | None = None, level: int = 4) -> Path:
    """Save a 16-bit PNG of a float image (Pillow cannot write 16-bit RGB), atomically."""
    return atomic_write(path, encode_png(to_uint16(image), text, level))


def read_png_text(path: Path) -> dict[str, str]:
    """The PNG's text chunks (empty if none); a clear error if it is not a PNG."""
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise InputError(f"{path}: is a {img.format} image, expected a PNG with generation metadata")
            return {k: v for k, v in img.info.items() if isinstance(v, str)}
    except (OSError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable PNG ({exc})") from exc
