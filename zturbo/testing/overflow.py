"""Tiny Z-Image DiT weights whose activations leave fp16's range the way the released model's do.

The released DiT's activations reach ~3.4e5 (fp16 ends at 65504). As in trained DiTs ("massive
activations"), a few residual channels carry huge, nearly token-independent values that act as biases,
and large post-norm weights on those channels add to them block after block; the FFN's
silu(W₁h)·W₃h product and its W₂ output reach 1e5 and more, as does the out-projection. These weights
reproduce each site at `TINY_DIT` size: random weights (`synthetic.random_state_dict`) plus, on the
`MASSIVE` channels, embedder biases and pad tokens of 2e4 and post-norm weights of 2e4 in every
block, gate biases that saturate tanh, and W₁, W₃, W₂, V and the out-projection scaled up. With
these the residual reaches ~2e5, W₂'s output ~1.7e5 (on the tests' inputs), and the
network stays as well conditioned as a trained one (bf16 lands within ~1e-2 of fp32).
Values are rounded to bf16 first, as in the published bf16 file, so fp16 and fp32 hold the very same
weights (bf16 → fp16 is exact in range).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save_file

from zturbo.checkpoints import keymaps
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.models.configs import DiTConfig
from zturbo.testing.synthetic import TINY, TINY_DIT, build_random_dit, write_comfy_models

MASSIVE = (3, 17, 40)  # residual channels that grow (indices < TINY_DIT.dim)
_BLOCK = re.compile(r"^(noise_refiner|context_refiner|layers)\.\d+\.")
# name suffix → factor applied to the random weight (rows of the whole matrix)
_SCALED = {
    "feed_forward.w1.weight": 60.0,
    "feed_forward.w3.weight": 60.0,
    "feed_forward.w2.weight": 8.0,
    "attention.to_v.weight": 60.0,
    "attention.to_out.0.weight": 40.0,
}
POST_NORM = 2e4  # attention_norm2 / ffn_norm2 weight on the MASSIVE channels
BIAS = 2e4  # x/caption embedder bias and pad tokens on the MASSIVE channels
GATE_BIAS = 3.0  # tanh(3) = 0.995


def overflow_prone_dit(config: DiTConfig = TINY_DIT, seed: int = 0):
    """(meta-built diffusers module, state dict in fp32 holding bf16-representable values)."""
    model, state_dict = build_random_dit(config, seed=seed)
    dim = config.dim
    massive = list(MASSIVE)
    for name, value in state_dict.items():
        if name in ("all_x_embedder.2-1.bias", "cap_embedder.1.bias", "x_pad_token", "cap_pad_token"):
            value[..., massive] = BIAS
        if not _BLOCK.match(name):
            continue
        suffix = name.split(".", 2)[2]
        if suffix in _SCALED:
            value.mul_(_SCALED[suffix])
        elif suffix in ("attention_norm2.weight", "ffn_norm2.weight"):
            value[massive] = POST_NORM
        elif suffix == "adaLN_modulation.0.bias":  # (scale_msa, gate_msa, scale_mlp, gate_mlp)
            value[dim : 2 * dim] = GATE_BIAS
            value[3 * dim :] = GATE_BIAS
    return model, {k: v.to(torch.bfloat16).float() for k, v in state_dict.items()}


def write_overflow_prone_models(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """The tiny ComfyUI files (bf16) with the overflow-prone DiT in place of the random one."""
    paths = write_comfy_models(models_dir, TINY, dtype=torch.bfloat16, seed=seed)
    _, state_dict = overflow_prone_dit(TINY.dit, seed)
    bf16 = {k: v.to(torch.bfloat16) for k, v in state_dict.items()}
    tensors = cast("dict[str, torch.Tensor]", keymaps.diffusers_dit_to_comfy(bf16))  # tensors in, tensors out
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(models_dir / COMFY_FILES["dit"]))
    return paths
