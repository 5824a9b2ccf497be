"""One-token decoding steps of a loaded transformers `Qwen3Model`, without transformers' per-call work.

transformers' forward spends ~50 ms of Python a token on an H200 (mask building, cache bookkeeping,
kwargs plumbing: ~1,750 launches for 6 ms of GPU work), so the GPU idles while decoding. Here a step
is the same layers called directly: each decoder layer's own norms, projections and MLP modules (so
merged LoRAs, side paths and quantized linears behave as in the model), the model's own rotary
embedding, and a preallocated KV cache the prefill's DynamicCache is copied into, read through
`scaled_dot_product_attention` with grouped-query heads. No mask: one query attends to every cached
position, which is what the causal mask allows it.

Only for a model resident on one device: the streamed plans' hooks sit on the decoder layers, which
this path does not call, so those decode through transformers (on the CPU, where Python is not the
bottleneck).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticDecoder:
    """Decoding state for one sequence: per-layer key/value buffers sized for the whole generation."""

    def __init__(self, model: nn.Module, cache: Any, max_new_tokens: int) -> None:
        self.model: Any = model  # a transformers Qwen3Model
        first = cache.layers[0].keys  # (1, kv heads, prompt length, head dim)
        self.length = first.shape[2]
        size = (1, first.shape[1], self.length + max_new_tokens, first.shape[3])
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        for layer in cache.layers:
            keys = torch.empty(size, dtype=layer.keys.dtype, device=layer.keys.device)
            values = torch.empty_like(keys)
            keys[:, :, : self.length] = layer.keys
            values[:, :, : self.length] = layer.values
            self.keys.append(keys)
            self.values.append(values)

    @torch.no_grad()
    def step(self, token: int) -> Tensor:
        """The final-norm hidden state (1, 1, hidden) after `token` at the next position."""
        model, position = self.model, self.length
        x = model.embed_tokens(torch.tensor([[token]], device=self.keys[0].device))
        cos, sin = model.rotary_emb(x, torch.tensor([[position]], device=x.device))
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        for index, layer in enumerate(model.layers):
            x = x + self._attention(layer.self_attn, layer.input_layernorm(x), cos, sin, index)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.length += 1
        return model.norm(x)

    def _attention(self, attn: Any, x: Tensor, cos: Tensor, sin: Tensor, index: int) -> Tensor:
        head_dim, end = attn.head_dim, self.length + 1
        q = attn.q_norm(attn.q_proj(x).view(1, 1, -1, head_dim)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(1, 1, -1, head_dim)).transpose(1, 2)
        v = attn.v_proj(x).view(1, 1, -1, head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        self.keys[index][:, :, self.length : end] = k
        self.values[index][:, :, self.length : end] = v
        out = F.scaled_dot_product_attention(
            q,
            self.keys[index][:, :, :end],
            self.values[index][:, :, :end],
            scale=attn.scaling,
            enable_gqa=True,
        )
        return attn.o_proj(out.transpose(1, 2).reshape(1, 1, -1))


def can_run(model: nn.Module, device: torch.device) -> bool:
    """Whether the lean step applies: every weight already on `device` (nothing streamed or offloaded)."""
    index = (
        device.index
        if device.index is not None
        else (torch.cuda.current_device() if device.type == "cuda" else None)
    )
    return all(p.device.type == device.type and p.device.index == index for p in model.parameters())


__all__ = ["StaticDecoder", "can_run"]
