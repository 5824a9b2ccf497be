"""Our PNG encoder: pixel-exact round trips through PIL and a reference decoder, valid zlib streams
across parallel strips, text chunks PIL reads back (Latin-1 tEXt, UTF-8 iTXt), atomic writes."""

from __future__ import annotations

import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zturbo.errors import InputError
from zturbo.nodes.saving import write_png8, write_png16
from zturbo.output import png
from zturbo.output.png import encode_png, read_png_text, save_png, save_png16


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, checking the signature, each CRC and that IEND ends the file."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        pos += 12 + length
    assert pos == len(data) and out[0][0] == b"IHDR" and out[-1] == (b"IEND", b"")
    return out


def idat_stream(data: bytes) -> bytes:
    """The decompressed image stream; zlib.decompress checks the header and the Adler-32."""
    return zlib.decompress(b"".join(payload for kind, payload in chunks(data) if kind == b"IDAT"))


def unfilter(raw: bytes, height: int, row_bytes: int, bpp: int) -> np.ndarray:
    """Reference decoder for all five PNG filters, byte by byte (small images only)."""
    lines = np.frombuffer(raw, np.uint8).reshape(height, row_bytes + 1)
    rows, prev = [], [0] * row_bytes
    for line in lines.tolist():
        kind, cur = line[0], [0] * row_bytes
        for i, value in enumerate(line[1:]):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                assert kind == 4
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            cur[i] = (value + pred) & 0xFF
        rows.append(cur)
        prev = cur
    return np.array(rows, np.uint8).reshape(height, row_bytes)


def decode_exact(data: bytes) -> np.ndarray:
    """(H, W, C) pixels (uint16 native for 16-bit) through the reference decoder."""
    width, height, depth, color_type = struct.unpack(">IIBB", chunks(data)[0][1][:10])
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[color_type]
    bpp = channels * depth // 8
    rows = unfilter(idat_stream(data), height, width * bpp, bpp)
    if depth == 16:
        return rows.view(">u2").astype(np.uint16).reshape(height, width, channels)
    return rows.reshape(height, width, channels)


def pil_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def smooth_image(height: int = 1024, width: int = 1024, seed: int = 0) -> np.ndarray:
    """Gradients + small noise: what filters and deflate are tuned for."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [
            128 + 100 * np.sin(x / 97 + y / 211),
            128 + 90 * np.cos(y / 150 - x / 300),
            127 * (x / width + y / height),
        ],
        axis=-1,
    )
    rgb += np.random.default_rng(seed).normal(0, 2.0, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


RNG = np.random.default_rng(1234)


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 3), (7, 5, 3), (5, 7, 4), (7, 5, 1), (3, 4, 2), (1, 300, 3), (300, 1, 4), (1024, 1024, 3)],
)
def test_8bit_round_trip_through_pil(shape):
    array = RNG.integers(0, 256, shape, dtype=np.uint8)
    array[: shape[0] // 2] //= 7  # some structure as well as noise
    got = pil_pixels(encode_png(array))
    assert np.array_equal(got.reshape(shape), array)


def test_grey_2d_array_and_pil_modes():
    grey = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(grey))) as img:
        assert img.mode == "L" and np.array_equal(np.asarray(img), grey)
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(rgba))) as img:
        assert img.mode == "RGBA"


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (5, 9, 1), (4, 3, 4)])
def test_16bit_pixel_exact(shape):
    array = RNG.integers(0, 65536, shape, dtype=np.uint16)
    data = encode_png(array, level=6)
    ihdr = chunks(data)[0][1]
    assert ihdr[8] == 16  # bit depth
    assert np.array_equal(decode_exact(data), array)


def test_16bit_large_multi_strip_and_pil():
    rgb = RNG.integers(0, 65536, (301, 257, 3), dtype=np.uint16)
    rgb[100:] = rgb[100:] // 4096 * 4096  # low bytes all zero for a while: differs from PIL's 8-bit view
    assert np.array_equal(pil_pixels(encode_png(rgb, workers=3)), (rgb >> 8).astype(np.uint8))
    grey = RNG.integers(0, 65536, (513, 300), dtype=np.uint16)  # I;16: PIL keeps all 16 bits
    with Image.open(io.BytesIO(encode_png(grey, workers=4))) as img:
        assert img.mode == "I;16" and np.array_equal(np.asarray(img), grey)


def test_reference_decoder_agrees_across_strips(monkeypatch):
    monkeypatch.setattr(png, "_MIN_STRIP_BYTES", 1)  # split even a small image into many strips
    monkeypatch.setattr(png, "_BLOCK_BYTES", 100)  # and each strip into several filter blocks
    array = RNG.integers(0, 256, (23, 19, 3), dtype=np.uint8)
    array[5:12] = 200
    for workers in (1, 2, 5, 23, 40):
        data = encode_png(array, level=4, workers=workers)
        assert np.array_equal(decode_exact(data), array), workers
        assert np.array_equal(pil_pixels(data), array), workers


def strip_count(monkeypatch, array: np.ndarray, workers: int | None) -> int:
    calls = []
    real = png._deflate_strip

    def spy(*args):
        calls.append(args[1:3])
        return real(*args)

    monkeypatch.setattr(png, "_deflate_strip", spy)
    assert np.array_equal(pil_pixels(encode_png(array, workers=workers)).reshape(array.shape), array)
    monkeypatch.undo()
    return len(calls)


def test_small_images_use_one_strip_large_ones_several(monkeypatch):
    tiny = RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert strip_count(monkeypatch, tiny, 8) == 1
    large = smooth_image(1024, 1024)
    assert strip_count(monkeypatch, large, 4) == 4
    assert strip_count(monkeypatch, large, 1) == 1
    assert strip_count(monkeypatch, large, None) == min(png.default_workers(), 12)
    assert strip_count(monkeypatch, large, 64) == 12  # 3 MiB / 256 KiB: strips stay worth a thread


def test_idat_decompresses_to_the_filtered_stream():
    image = smooth_image(600, 500)
    rows = image.reshape(600, -1)
    expected = np.empty((600, rows.shape[1] + 1), np.uint8)
    prev = np.vstack([np.zeros((1, rows.shape[1]), np.uint8), rows[:-1]])
    png._filter_block(rows, prev, 3, expected, paeth=True)  # the whole image in one numpy pass
    for workers in (1, 3):
        data = encode_png(image, workers=workers)
        assert idat_stream(data) == expected.tobytes()  # also checks the combined Adler-32
        assert np.array_equal(pil_pixels(data), image)


def test_adler32_combine_matches_zlib():
    data = RNG.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65520, 65521, 65522, 200_000, len(data)):
        first, second = data[:cut], data[cut:]
        combined = png._adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(data)


@pytest.mark.parametrize("level", range(10))
def test_every_level_decodes(level):
    array = smooth_image(64, 48)
    data = encode_png(array, level=level)
    assert np.array_equal(pil_pixels(data), array)
    assert zlib.decompress(b"".join(p for k, p in chunks(data) if k == b"IDAT"))  # header + Adler-32 valid


def test_level_zero_stores_unfiltered():
    array = smooth_image(32, 16)
    raw = np.frombuffer(idat_stream(encode_png(array, level=0)), np.uint8).reshape(32, 16 * 3 + 1)
    assert not raw[:, 0].any() and np.array_equal(raw[:, 1:].reshape(array.shape), array)


def test_default_strategy_also_valid():
    array = smooth_image(200, 300)
    data = encode_png(array, level=6, workers=2, strategy=zlib.Z_DEFAULT_STRATEGY)
    assert np.array_equal(pil_pixels(data), array)


@pytest.mark.parametrize("level", [-1, 10, 4.0, True, "4", None])
def test_bad_level_is_rejected(level):
    with pytest.raises(ValueError, match="compression level must be an integer from 0 to 9"):
        encode_png(np.zeros((2, 2, 3), np.uint8), level=level)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="workers"):
        encode_png(np.zeros((2, 2, 3), np.uint8), workers=0)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        encode_png(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="C in 1–4"):
        encode_png(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError, match="width and height"):
        encode_png(np.zeros((0, 2, 3), np.uint8))


LONG_JSON = json.dumps(
    {str(i): {"class_type": "KSampler", "inputs": {"seed": i, "text": "ä" * 50}} for i in range(3000)}
)
TEXTS = {
    "parameters": "a cat\nSteps: 8, Sampler: res_multistep, café",
    "prompt": json.dumps({"6": {"inputs": {"text": "一只在雪地里的红狐狸 🦊✨"}}}, ensure_ascii=False),
    "emoji": "🎨🖼️",
    "workflow": LONG_JSON,
    "empty": "",
}


def test_text_chunks_round_trip(tmp_path):
    data = encode_png(np.zeros((4, 4, 3), np.uint8), TEXTS)
    kinds = {payload.split(b"\x00", 1)[0].decode("latin-1"): kind for kind, payload in chunks(data)[1:-2]}
    assert kinds == {
        "parameters": b"tEXt",
        "prompt": b"iTXt",
        "emoji": b"iTXt",
        "workflow": b"tEXt",
        "empty": b"tEXt",
    }
    assert [kind for kind, _ in chunks(data)].index(b"IDAT") == len(TEXTS) + 1  # text before the pixels
    with Image.open(io.BytesIO(data)) as img:
        assert img.text == TEXTS and {k: img.info[k] for k in TEXTS} == TEXTS
    path = tmp_path / "t.png"
    path.write_bytes(data)
    assert read_png_text(path) == TEXTS


def test_text_keys_must_be_latin1():
    with pytest.raises(InputError, match="Latin-1"):
        encode_png(np.zeros((1, 1, 3), np.uint8), {"提示": "x"})
    with pytest.raises(InputError, match="NUL"):
        encode_png(np.zeros((1, 1, 3), np.uint8), {"a\x00b": "x"})


def test_save_png_tensor_pixels_as_comfyui(tmp_path):
    image = torch.rand(1, 37, 53, 3)[0] * 1.4 - 0.2  # out-of-range values are clipped
    path = save_png(image, tmp_path / "sub" / "a.png", {"prompt": "红狐狸"})
    expected = np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8)
    with Image.open(path) as img:
        assert np.array_equal(np.asarray(img), expected) and img.text == {"prompt": "红狐狸"}
    assert np.array_equal(np.asarray(png.to_pil(image)), expected)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]


def test_save_png_pil_and_arrays(tmp_path):
    rgb = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    save_png(Image.fromarray(rgb), tmp_path / "pil.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pil.png")), rgb)
    palette = Image.fromarray(rgb).convert("P")
    save_png(palette, tmp_path / "p.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png")), np.asarray(palette.convert("RGB")))
    save_png(rgb, tmp_path / "array.png", level=1)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "array.png")), rgb)
    floats = RNG.random((4, 5, 3), dtype=np.float32)
    save_png(floats, tmp_path / "floats.png")
    expected = np.clip(255.0 * floats, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "floats.png")), expected)


def test_save_png16_rounds(tmp_path):
    image = torch.rand(6, 7, 3)
    path = save_png16(image, tmp_path / "d.png", {"prompt": "雪"})
    expected = np.clip(65535.0 * image.numpy() + 0.5, 0, 65535).astype(np.uint16)
    assert np.array_equal(decode_exact(path.read_bytes()), expected)
    assert read_png_text(path) == {"prompt": "雪"}


def test_node_writers_take_unicode_text_at_any_level(tmp_path):
    """The old node encoder wrote tEXt as Latin-1: a Chinese prompt crashed previews and 16-bit saves."""
    image = torch.rand(5, 6, 3)
    text = {"prompt": json.dumps({"text": "雪地里的狐狸"}, ensure_ascii=False)}
    for level in (1, 4, 9):
        write_png8(image, tmp_path / f"l{level}.png", text, level)
        assert read_png_text(tmp_path / f"l{level}.png") == text
    write_png16(image, tmp_path / "16.png", text)
    assert read_png_text(tmp_path / "16.png") == text


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(png.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        save_png(torch.rand(4, 4, 3), target, {"prompt": "x"})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):  # an encoding error happens before any file is created
        save_png(np.zeros((2, 2, 3), np.int32), target)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_encodes_share_the_pool():
    images = [smooth_image(512, 512, seed=i) for i in range(6)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda a: encode_png(a, {"i": "ü"}, workers=4), images))
    for image, data in zip(images, results, strict=True):
        assert np.array_equal(pil_pixels(data), image)


def test_size_close_to_pil_level_4():
    """Speed must not cost much disk: at most 1.25× PIL's level-4 file on a smooth image."""
    image = smooth_image()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=4)
    ours = encode_png(image, level=4)
    assert len(ours) <= 1.25 * len(buffer.getvalue())


def test_writes_to_path_objects(tmp_path):
    path = png.atomic_write(Path(tmp_path) / "deep" / "x.bin", b"abc")
    assert path.read_bytes() == b"abc" and [p.name for p in path.parent.iterdir()] == ["x.bin"]
