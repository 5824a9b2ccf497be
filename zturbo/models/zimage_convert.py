"""Turn a loaded diffusers `ZImageTransformer2DModel` into a `ZImageDiT` without copying its weights.

Every tensor is reused as is (same storage), except Q/K/V and W1/W3 of plain `nn.Linear` layers,
which are concatenated once into one weight each so a block runs one GEMM where the reference runs
three (or two). The separate tensors are then released from the diffusers module (their parameters
become `meta`), so the model is never held twice; the diffusers module is spent afterwards and fails
loudly if run. Quantized layers (`QuantLinear`) resident on the GPU are stacked in their stored form
(see `fuse_linears`); host-side ones, which stream per call, are kept as they are and called one by one.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from zturbo.models.slots import WeightSlot
from zturbo.models.zimage_dit import DiTSettings, ZImageBlock, ZImageDiT


class SplitLinear(nn.Module):
    """Layers that cannot be fused (quantized or biased): each called, outputs concatenated."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def fuse_linears(parts: list[nn.Module]) -> nn.Module:
    """One layer whose output is the parts' outputs side by side; releases the parts' weights.

    Plain bias-free Linears are concatenated here. Quantized layers (`QuantLinear`) stack their stored
    rows through their own `concatenated` when their bytes are on the GPU (resident: one expansion and
    one GEMM instead of three). Host-side (streamed) ones stay separate: stacking would copy memory-mapped
    file pages into private RAM, which a small-VRAM machine is short of too.
    """
    stack = getattr(type(parts[0]), "concatenated", None)
    if stack is not None and all(b.is_cuda for p in parts for b in p.buffers()):
        fused = stack(parts)
        if fused is not None:
            for part in parts:
                for name, buf in part.named_buffers(recurse=False):
                    setattr(part, name, buf.to("meta"))
            return fused
    plain = all(type(p) is nn.Linear and p.bias is None for p in parts)
    if not plain or len({(p.weight.dtype, p.weight.device) for p in parts}) != 1:
        return SplitLinear(parts)
    linears = cast("list[nn.Linear]", parts)  # all plain nn.Linear: checked above
    weight = torch.cat([p.weight.detach() for p in linears])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    for part in linears:
        part.weight = nn.Parameter(part.weight.detach().to("meta"), requires_grad=False)
    return fused


def convert_block(block: Any) -> ZImageBlock:
    """A diffusers `ZImageTransformerBlock` as a `ZImageBlock` sharing its tensors.

    `Any`: read by duck typing (its Linears may have been replaced by `QuantLinear`s)."""
    attn, ff = block.attention, block.feed_forward
    if attn.norm_q is None:
        raise ValueError("Z-Image blocks without QK-norm are not supported")
    linears = {
        "qkv": fuse_linears([attn.to_q, attn.to_k, attn.to_v]),
        "out": attn.to_out[0],
        "w13": fuse_linears([ff.w1, ff.w3]),
        "w2": ff.w2,
    }
    norms = {
        "attn_norm1": block.attention_norm1.weight,
        "attn_norm2": block.attention_norm2.weight,
        "ffn_norm1": block.ffn_norm1.weight,
        "ffn_norm2": block.ffn_norm2.weight,
        "q_norm": attn.norm_q.weight,
        "k_norm": attn.norm_k.weight,
    }
    modulation = block.adaLN_modulation[0] if block.modulation else None
    return ZImageBlock(
        linears, norms, modulation, heads=attn.heads, eps=block.attention_norm1.eps, qk_eps=attn.norm_q.eps
    )


def from_diffusers(module: Any) -> ZImageDiT:
    """Convert (and spend) a diffusers Z-Image transformer; bf16, fp32 and QuantLinear layers all work."""
    _check_supported(module)
    config = module.config
    key = "2-1"
    t_linear = module.t_embedder.mlp[0]
    settings = DiTSettings(
        in_channels=module.in_channels,
        norm_eps=module.cap_embedder[0].eps,
        t_scale=float(module.t_scale),
        t_dtype=getattr(t_linear, "compute_dtype", None) or t_linear.weight.dtype,
        axes_dims=tuple(config.axes_dims),
        axes_lens=tuple(config.axes_lens),
        rope_theta=float(config.rope_theta),
    )
    final = module.all_final_layer[key]
    return ZImageDiT(
        settings,
        embedders={
            "x": module.all_x_embedder[key],
            "cap": module.cap_embedder[1],
            "t": module.t_embedder.mlp,
            "final_modulation": final.adaLN_modulation[1],
            "final": final.linear,
        },
        pad_tokens={"x": module.x_pad_token, "cap": module.cap_pad_token},
        cap_norm=module.cap_embedder[0].weight,
        noise_refiner=[convert_block(b) for b in module.noise_refiner],
        context_refiner=[convert_block(b) for b in module.context_refiner],
        layers=[convert_block(b) for b in module.layers],
    )


def _check_supported(module: Any) -> None:
    """Text-to-image Turbo/base checkpoints only: the omni (SigLIP) variant has another forward."""
    name = type(module).__name__
    if name != "ZImageTransformer2DModel":
        raise TypeError(f"expected diffusers' ZImageTransformer2DModel, got {name}")
    if getattr(module, "siglip_embedder", None) is not None:
        raise ValueError("the omni (SigLIP) Z-Image variant is not supported by zturbo's DiT")
    if tuple(module.all_patch_size) != (2,) or tuple(module.all_f_patch_size) != (1,):
        raise ValueError(f"only 2x2 patches are supported (got {module.all_patch_size})")
    if any(p.device.type == "meta" for p in module.parameters()):
        raise ValueError("the diffusers module holds meta tensors: was it converted already?")


def _linear_slots(layer: nn.Module, names: tuple[str, ...]) -> dict[str, WeightSlot]:
    """Reference weights `names` (equal row counts, stacked in order) inside one fused layer."""
    if isinstance(layer, SplitLinear):  # kept apart: each part is its own layer
        return {n: WeightSlot(part, "weight") for n, part in zip(names, layer.parts, strict=True)}
    rows = cast(int, layer.out_features) // len(names)  # nn.Linear or QuantLinear: an int
    return {n: WeightSlot(layer, "weight", i * rows, (i + 1) * rows) for i, n in enumerate(names)}


def _block_slots(block: ZImageBlock) -> dict[str, WeightSlot]:
    slots = {
        **_linear_slots(block.qkv, ("attention.to_q.weight", "attention.to_k.weight", "attention.to_v.weight")),
        **_linear_slots(block.w13, ("feed_forward.w1.weight", "feed_forward.w3.weight")),
        "attention.to_out.0.weight": WeightSlot(block.out, "weight"),
        "feed_forward.w2.weight": WeightSlot(block.w2, "weight"),
        "attention.norm_q.weight": WeightSlot(block, "q_norm"),
        "attention.norm_k.weight": WeightSlot(block, "k_norm"),
        "attention_norm1.weight": WeightSlot(block, "attn_norm1"),
        "attention_norm2.weight": WeightSlot(block, "attn_norm2"),
        "ffn_norm1.weight": WeightSlot(block, "ffn_norm1"),
        "ffn_norm2.weight": WeightSlot(block, "ffn_norm2"),
    }
    if block.modulation is not None:
        slots["adaLN_modulation.0.weight"] = WeightSlot(block.modulation, "weight")
        slots["adaLN_modulation.0.bias"] = WeightSlot(block.modulation, "bias")
    return slots


def dit_slots(dit: ZImageDiT) -> dict[str, WeightSlot]:
    """Where each of diffusers' `ZImageTransformer2DModel` weights lives in a converted `ZImageDiT`."""
    layers = {
        "all_x_embedder.2-1": dit.x_embedder,
        "cap_embedder.1": dit.cap_linear,
        "t_embedder.mlp.0": dit.t_mlp[0],  # type: ignore[index]
        "t_embedder.mlp.2": dit.t_mlp[2],  # type: ignore[index]
        "all_final_layer.2-1.linear": dit.final_linear,
        "all_final_layer.2-1.adaLN_modulation.1": dit.final_modulation,
    }
    slots = {f"{name}.{p}": WeightSlot(layer, p) for name, layer in layers.items() for p in ("weight", "bias")}
    slots |= {
        "cap_embedder.0.weight": WeightSlot(dit, "cap_norm"),
        "x_pad_token": WeightSlot(dit, "x_pad_token"),
        "cap_pad_token": WeightSlot(dit, "cap_pad_token"),
    }
    for group in ("noise_refiner", "context_refiner", "layers"):
        for i, block in enumerate(getattr(dit, group)):
            slots |= {f"{group}.{i}.{k}": v for k, v in _block_slots(block).items()}
    return {name: slot for name, slot in slots.items() if slot.exists}
