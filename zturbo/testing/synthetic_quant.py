"""Quantized variants of the random-weight model files, for tests and the GPU benchmark.

From one bf16 ComfyUI-layout set (`synthetic.write_comfy_models`) this writes GGUF DiTs and text
encoders (as published: `gguf_write`), ComfyUI's three fp8 layouts, its `comfy_quant` int8 (+ convrot),
nvfp4 and mxfp8 layouts (and "mixed" files of all of them), and — for parity tests — the "dequantized"
twin of any of them: the same values expanded by a reference (the `gguf` package's numpy dequantizer,
`fp8 · scale` in fp32, numpy expansions of the comfy-kitchen layouts) saved as plain fp32 safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors import safe_open
from safetensors.torch import save_file

from zturbo.checkpoints.gguf import llama_cpp_qwen3_to_hf
from zturbo.models.configs import DiTConfig, TextEncoderConfig
from zturbo.quant.selection import dit_tensor_is_quantized
from zturbo.testing.gguf_write import write_dit_gguf, write_text_encoder_gguf
from zturbo.testing.synthetic import TINY_VAE, ModelSet

# Rows of 768/2048/256 values are whole blocks for every type, K-quants included (256 a block).
GGUF_TINY = ModelSet(
    DiTConfig(dim=768, n_layers=2, n_refiner_layers=1, n_heads=6, n_kv_heads=6, cap_feat_dim=256),
    TextEncoderConfig(
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
    ),
    TINY_VAE,
)
FP8_FORMATS = ("plain_e4m3", "plain_e5m2", "scaled_fp8", "comfy_quant")
DIT_PREFIX = "model.diffusion_model."


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def gguf_dit_from(comfy_dit: Path, out: Path, qtype: Q, *, device: str = "cpu") -> Path:
    """A DiT GGUF (original names, `model.diffusion_model.` prefix) from a ComfyUI bf16 file."""
    sd = read_safetensors(comfy_dit)
    sd = {k.removeprefix(DIT_PREFIX): v for k, v in sd.items()}
    return write_dit_gguf(out, sd, qtype, device=device, prefix=DIT_PREFIX)


def gguf_text_encoder_from(
    comfy_te: Path, out: Path, qtype: Q, *, device: str = "cpu", arch: str = "qwen3"
) -> Path:
    """A llama.cpp-named text encoder GGUF from ComfyUI's `model.`-prefixed Qwen3 file."""
    sd = {k.removeprefix("model."): v for k, v in read_safetensors(comfy_te).items()}
    return write_text_encoder_gguf(out, sd, qtype, device=device, arch=arch)


def dequantized_gguf(path: Path, out: Path, *, text_encoder: bool = False) -> Path:
    """The reference expansion of every tensor of a GGUF file, saved as fp32 safetensors."""
    reader = gguf.GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), Q(t.tensor_type))
        shape = tuple(reversed([int(d) for d in t.shape]))
        name = "model." + llama_cpp_qwen3_to_hf(t.name) if text_encoder else t.name
        tensors[name] = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(shape)
    save_file(tensors, str(out))
    return out


def _fp8(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (w.float().abs().amax() / torch.finfo(dtype).max).clamp(min=1e-12)
    return (w.float() / scale).to(dtype), scale.reshape(())


def _comfy_quant(fmt: str) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)


def fp8_file_from(comfy: Path, out: Path, fmt: str, *, quantize=dit_tensor_is_quantized) -> Path:
    """ComfyUI fp8 layouts of a bf16 file: `plain_e4m3`/`plain_e5m2` (cast, no scale), legacy
    `scaled_fp8` (marker + `scale_weight`), `comfy_quant` (per-layer JSON + `weight_scale`).
    `quantize(name, shape)` picks the tensors (default: the DiT main blocks' matrices)."""
    sd, prefix = read_safetensors(comfy), ""
    if all(k.startswith(DIT_PREFIX) for k in sd):
        prefix = DIT_PREFIX
    elif all(k.startswith("model.") for k in sd):
        prefix = "model."
    dtype = torch.float8_e5m2 if fmt == "plain_e5m2" else torch.float8_e4m3fn
    result: dict[str, torch.Tensor] = (
        {"scaled_fp8": torch.empty(0, dtype=dtype)} if fmt == "scaled_fp8" else {}
    )
    for key, w in sd.items():
        name = key.removeprefix(prefix)
        if not (name.endswith(".weight") and quantize(name, tuple(w.shape))):
            result[key] = w
        elif fmt.startswith("plain"):
            result[key] = w.to(dtype)
        else:
            layer = key.removesuffix(".weight")
            result[key], scale = _fp8(w, dtype)
            if fmt == "scaled_fp8":
                result[layer + ".scale_weight"] = scale
            else:
                result[layer + ".weight_scale"] = scale
                result[layer + ".comfy_quant"] = _comfy_quant("float8_e4m3fn")
    save_file(result, str(out))
    return out


def dequantized_fp8(path: Path, out: Path) -> Path:
    """`w.float() * scale` for every fp8 weight of a ComfyUI fp8 file; markers dropped; fp32 safetensors."""
    sd = read_safetensors(path)
    plain = {}
    for key, value in sd.items():
        if key.endswith(("scaled_fp8", ".scale_weight", ".weight_scale", ".comfy_quant")):
            continue
        layer = key.removesuffix(".weight")
        scale = sd.get(layer + ".scale_weight", sd.get(layer + ".weight_scale"))
        value = value.float()
        plain[key] = value * scale.float() if scale is not None and key.endswith(".weight") else value
    save_file(plain, str(out))
    return out


def stored_types(path: Path) -> dict[str, str]:
    """name → stored type name of a GGUF file (for checking which tensors were quantized)."""
    return {t.name: Q(t.tensor_type).name for t in gguf.GGUFReader(path).tensors}


# ---------------------------------------------------------------- ComfyUI's int8 / nvfp4 / mxfp8 layouts

# Written from the format definitions (comfy-kitchen's layouts as ComfyUI stores them), independently of
# zturbo's reader: nearest-value quantizers, explicit nibble packing and an index formula for cuBLAS's
# tiled block-scale layout. "mixed" cycles through the formats layer by layer, leaving some layers bf16.
COMFY_QUANT_FORMATS = (
    "float8_e4m3fn",
    "int8_tensorwise",
    "int8_convrot",
    "nvfp4",
    "nvfp4_prescaled",
    "mxfp8",
)
MIXED_CYCLE = ("int8_convrot", "nvfp4", None, "mxfp8", "float8_e4m3fn", "int8_tensorwise")
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def regular_hadamard(size: int) -> np.ndarray:
    """H₄ ⊗ … ⊗ H₄ (entries ±1, float64), `size` a power of 4: ComfyUI's ConvRot matrix times √size."""
    h4 = np.array([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=np.float64)
    h: np.ndarray = np.ones((1, 1))
    while h.shape[0] < size:
        h = np.kron(h, h4)
    if h.shape[0] != size:
        raise ValueError(f"{size} is not a power of 4")
    return h


def tile_block_scales(grid: np.ndarray) -> np.ndarray:
    """Row-major `(rows, cols)` block scales -> cuBLAS's tiled layout `(⌈rows/128⌉·128, ⌈cols/4⌉·4)`.

    Value (r, c) goes to tile (r // 128, c // 4), stored tile after tile, at offset
    (r % 32)·16 + ((r % 128) // 32)·4 + c % 4 within its 512 values; padding is zero.
    """
    rows, cols = grid.shape
    row_tiles, col_tiles = -(-rows // 128), -(-cols // 4)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    tile = (r // 128) * col_tiles + c // 4
    offset = tile * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
    flat = np.zeros(row_tiles * col_tiles * 512, dtype=grid.dtype)
    flat[offset.ravel()] = grid.ravel()
    return flat.reshape(row_tiles * 128, col_tiles * 4)


def _as_tensor(array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t if dtype is None else t.view(dtype)


def _int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True) / 127.0, 1e-30).astype(np.float32)
    return np.clip(np.rint(w / scale), -128, 127).astype(np.int8), scale


def _write_int8(w: np.ndarray, *, convrot: int = 0) -> dict[str, torch.Tensor]:
    if convrot:  # stored rotated: W · Hᵀ per group of `convrot` inputs, H = H± / √g
        h = regular_hadamard(convrot) / np.sqrt(convrot)
        groups = w.reshape(w.shape[0], -1, convrot) @ h.T
        q, scale = _int8_rows(groups.reshape(w.shape))
        return {"weight": _as_tensor(q), "weight_scale": _as_tensor(scale)}
    scale = np.float32(max(np.abs(w).max() / 127.0, 1e-30))
    q = np.clip(np.rint(w / scale), -128, 127).astype(np.int8)
    return {"weight": _as_tensor(q), "weight_scale": torch.tensor(scale)}


def _e2m1_codes(x: np.ndarray) -> np.ndarray:
    """Nearest e2m1 code of each value (magnitudes clamped to 6): bit 3 the sign, bits 0-2 the index."""
    magnitudes = np.asarray(E2M1_MAGNITUDES)
    index = np.abs(np.abs(x)[..., None] - magnitudes).argmin(axis=-1)
    return (index + 8 * (x < 0)).astype(np.uint8)


def _write_nvfp4(w: np.ndarray, *, prescale: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    if prescale is not None:  # the input features are multiplied by `prescale` before the matmul
        w = w / prescale.astype(np.float64)
    rows, cols = w.shape
    blocks = w.reshape(rows, cols // 16, 16)
    per_tensor = np.float32(np.abs(w).max() / (448.0 * 6.0))
    wanted = np.abs(blocks).max(axis=-1) / 6.0 / per_tensor
    block_scale = torch.from_numpy(np.minimum(wanted, 448.0).astype(np.float32)).to(torch.float8_e4m3fn)
    total = per_tensor * block_scale.float().numpy()
    scaled = np.divide(blocks, total[..., None], out=np.zeros_like(blocks), where=total[..., None] > 0)
    codes = _e2m1_codes(scaled.reshape(rows, cols))
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]  # element 2i in the high nibble
    tiled = tile_block_scales(block_scale.view(torch.uint8).numpy())
    out = {
        "weight": _as_tensor(packed.astype(np.uint8)),
        "weight_scale": _as_tensor(tiled, torch.float8_e4m3fn),
        "weight_scale_2": torch.tensor(per_tensor),
        "input_scale": torch.tensor(np.float32(1.0)),  # present in ComfyUI's files, unused by zturbo
    }
    if prescale is not None:
        out["pre_quant_scale"] = _as_tensor(prescale.astype(np.float32)).to(torch.bfloat16)
    return out


def _write_mxfp8(w: np.ndarray) -> dict[str, torch.Tensor]:
    rows, cols = w.shape
    blocks = w.reshape(rows, cols // 32, 32)
    amax = np.abs(blocks).max(axis=-1)
    exponent = np.ceil(np.log2(np.maximum(amax / 448.0, 2.0**-127))) + 127
    exponent = np.where(amax == 0, 0, np.clip(exponent, 0, 254)).astype(np.uint8)
    scale = np.where(exponent == 0, 1.0, 2.0 ** (exponent.astype(np.float64) - 127))
    data = torch.from_numpy(
        np.clip(blocks / scale[..., None], -448, 448).reshape(rows, cols).astype(np.float32)
    )
    return {
        "weight": data.to(torch.float8_e4m3fn),
        "weight_scale": _as_tensor(tile_block_scales(exponent), torch.float8_e8m0fnu),
    }


def _write_fp8(w: np.ndarray) -> dict[str, torch.Tensor]:
    data, scale = _fp8(torch.from_numpy(w.astype(np.float32)), torch.float8_e4m3fn)
    return {"weight": data, "weight_scale": scale}


def comfy_quant_layer(w: torch.Tensor, fmt: str, *, convrot_groupsize: int = 256) -> dict[str, torch.Tensor]:
    """One Linear's tensors in ComfyUI's `fmt` layout, keyed by suffix (`weight`, `weight_scale`, ...)."""
    array = w.detach().float().numpy().astype(np.float64)
    cols: int = array.shape[1]
    if fmt == "int8_convrot" and cols % convrot_groupsize == 0:
        tensors = _write_int8(array, convrot=convrot_groupsize)
        conf = {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": convrot_groupsize}
    elif fmt in ("int8_tensorwise", "int8_convrot"):
        tensors, conf = _write_int8(array), {"format": "int8_tensorwise"}
    elif fmt in ("nvfp4", "nvfp4_prescaled"):
        prescale = 0.75 + 0.5 * np.random.default_rng(cols).random(cols) if fmt == "nvfp4_prescaled" else None
        tensors, conf = _write_nvfp4(array, prescale=prescale), {"format": "nvfp4"}
    elif fmt == "mxfp8":
        tensors, conf = _write_mxfp8(array), {"format": "mxfp8"}
    elif fmt == "float8_e4m3fn":
        tensors, conf = _write_fp8(array), {"format": "float8_e4m3fn"}
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(COMFY_QUANT_FORMATS)}")
    tensors["comfy_quant"] = torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)
    return tensors


def comfy_quant_file_from(
    comfy: Path,
    out: Path,
    fmt: str,
    *,
    quantize=dit_tensor_is_quantized,
    convrot_groupsize: int = 256,
) -> Path:
    """ComfyUI mixed-precision (`comfy_quant`) file of a bf16 ComfyUI-layout file: the tensors
    `quantize(name, shape)` picks (default: the DiT main blocks' matrices) in layout `fmt` (one of
    `COMFY_QUANT_FORMATS`, or "mixed": `MIXED_CYCLE` layer after layer), the rest as they were."""
    sd = read_safetensors(comfy)
    prefix = next((p for p in (DIT_PREFIX, "model.") if all(k.startswith(p) for k in sd)), "")
    result: dict[str, torch.Tensor] = {}
    picked = 0
    for key, w in sd.items():
        name = key.removeprefix(prefix)
        chosen: str | None = fmt
        if name.endswith(".weight") and quantize(name, tuple(w.shape)) and fmt == "mixed":
            chosen, picked = MIXED_CYCLE[picked % len(MIXED_CYCLE)], picked + 1
        if not (chosen and name.endswith(".weight") and quantize(name, tuple(w.shape))):
            result[key] = w
            continue
        layer = key.removesuffix(".weight")
        for suffix, tensor in comfy_quant_layer(w, chosen, convrot_groupsize=convrot_groupsize).items():
            result[f"{layer}.{suffix}"] = tensor
    save_file(result, str(out))
    return out


# ---------------------------------------------------------------- reference expansions of those layouts

# numpy, from the definitions, sharing no code with `zturbo.quant` or `zturbo.checkpoints.fp8`: a value
# table for e2m1, the tile index formula read value by value, a float64 matrix product for the rotation.
E2M1_TABLE = np.array([*E2M1_MAGNITUDES, *(-m for m in E2M1_MAGNITUDES)])


def untile_reference(tiled: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Block scales read from cuBLAS's tiles with the index formula of `tile_block_scales`."""
    col_tiles = -(-cols // 4)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    offset = ((r // 128) * col_tiles + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
    return tiled.reshape(-1)[offset]


def int8_reference(t: dict[str, torch.Tensor], group: int = 0) -> np.ndarray:
    """`q · scale`; rotated (`group`): `(q · H±) · scale / √g` in float64 (exact), rounded to float32."""
    q, scale = t["weight"].numpy(), t["weight_scale"].numpy().astype(np.float32)
    if not group:
        return q.astype(np.float32) * scale
    rows, cols = q.shape
    sums = (q.astype(np.float64).reshape(rows, -1, group) @ regular_hadamard(group)).reshape(rows, cols)
    return (sums * (scale.astype(np.float64) / np.sqrt(group))).astype(np.float32)


def nvfp4_reference(t: dict[str, torch.Tensor]) -> np.ndarray:
    """e2m1 (high nibble first) · (weight_scale_2 · block scale), then · pre_quant_scale, in float32."""
    packed = t["weight"].numpy()
    rows, cols = packed.shape[0], packed.shape[1] * 2
    codes = np.empty((rows, cols), dtype=np.int64)
    codes[:, 0::2], codes[:, 1::2] = packed >> 4, packed & 15
    blocks = untile_reference(t["weight_scale"].view(torch.uint8).numpy(), rows, cols // 16)
    block = torch.from_numpy(blocks).view(torch.float8_e4m3fn).float().numpy()
    total = np.float32(t["weight_scale_2"].item()) * block
    weight = (E2M1_TABLE[codes].astype(np.float32).reshape(rows, -1, 16) * total[..., None]).reshape(
        rows, cols
    )
    if "pre_quant_scale" in t:
        weight = weight * t["pre_quant_scale"].float().numpy()[None, :]
    return weight


def mxfp8_reference(t: dict[str, torch.Tensor]) -> np.ndarray:
    """fp8 · 2^(e − 127), exponent byte 0 reading as 0."""
    data = t["weight"].float().numpy()
    rows, cols = data.shape
    exponents = untile_reference(t["weight_scale"].view(torch.uint8).numpy(), rows, cols // 32)
    scale = np.where(exponents == 0, 0.0, np.ldexp(1.0, exponents.astype(np.int64) - 127))
    return (data.reshape(rows, -1, 32) * scale[..., None]).reshape(rows, cols).astype(np.float32)


def comfy_quant_reference(t: dict[str, torch.Tensor], conf: dict) -> np.ndarray:
    """The float32 weight of one `comfy_quant` layer (`t`: its tensors by suffix; `conf`: its JSON)."""
    fmt = conf["format"]
    if fmt == "int8_tensorwise":
        return int8_reference(t, int(conf.get("convrot_groupsize", 256)) if conf.get("convrot") else 0)
    if fmt == "nvfp4":
        return nvfp4_reference(t)
    if fmt == "mxfp8":
        return mxfp8_reference(t)
    if fmt in ("float8_e4m3fn", "float8_e5m2"):
        return t["weight"].float().numpy() * t["weight_scale"].float().numpy()
    raise ValueError(f"no reference for {fmt!r}")


def dequantized_comfy_quant(path: Path, out: Path) -> Path:
    """The reference expansion of every `comfy_quant` layer of a file; other tensors as fp32 safetensors."""
    sd = read_safetensors(path)
    plain: dict[str, torch.Tensor] = {}
    layers = {k.removesuffix(".comfy_quant") for k in sd if k.endswith(".comfy_quant")}
    for layer in layers:
        conf = json.loads(sd[f"{layer}.comfy_quant"].numpy().tobytes())
        tensors = {k[len(layer) + 1 :]: v for k, v in sd.items() if k.startswith(f"{layer}.")}
        plain[f"{layer}.weight"] = torch.from_numpy(
            np.ascontiguousarray(comfy_quant_reference(tensors, conf))
        )
    companions = tuple(f".{s}" for s in ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale"))
    for key, value in sd.items():
        layer, _, _ = key.rpartition(".")
        if key not in plain and not (layer in layers and key.endswith((*companions, ".comfy_quant"))):
            plain[key] = value.float()
    save_file(plain, str(out))
    return out
