"""Quantized variants of the random-weight model files, for tests and the GPU benchmark.

From one bf16 ComfyUI-layout set (`synthetic.write_comfy_models`) this writes GGUF DiTs and text
encoders (as published: `gguf_write`), ComfyUI's three fp8 layouts, and — for parity tests — the
"dequantized" twin of any of them: the same values expanded by the reference (the `gguf` package's
numpy dequantizer, `fp8 · scale` in fp32) and saved as plain fp32 safetensors.
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
