"""One-token decoding steps of a loaded transformers `Qwen3Model`, without transformers' per-call work.

transformers' forward spends ~50 ms of Python a token on an H200 (mask building, cache bookkeeping,
kwargs plumbing: ~1,750 launches for 6 ms of GPU work), so the GPU idles while decoding. Here a step
is the same layers called directly: each decoder layer's own norms, projections and MLP modules (so
merged LoRAs, side paths and quantized linears behave as in the model), the model's own rotary
embedding, and a preallocated KV cache the prefill's DynamicCache is copied into, read through
`scaled_dot_product_attention` with grouped-query heads and a mask of the positions written so far
(one query attends to every earlier position: what the causal mask allows it).

Only for a model resident on one device: the streamed plans' hooks sit on the decoder layers, which
this path does not call, so those decode through transformers (on the CPU, where Python is not the
bottleneck).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

Step = Callable[[Tensor, Tensor, Tensor], Tensor]  # (token ids, position, mask) -> logits


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticDecoder:
    """Decoding state for one sequence: per-layer key/value buffers sized for the whole generation and
    a mask of the positions written. Every step has the same shapes, so on CUDA the step is captured
    once as a CUDA graph and replayed (`graphs`: the engine passes `runtime.graphs.GraphCache`): one
    launch a token instead of ~700.
    The cache writes are in place at a position given as a tensor, so the warm-up calls before capture
    rewrite the same slot with the same values."""

    def __init__(
        self,
        model: nn.Module,
        cache: Any,
        max_new_tokens: int,
        head: Tensor,
        graphs: Callable[[Step], Step] | None = None,
    ) -> None:
        self.model: Any = model  # a transformers Qwen3Model
        self.head = head  # the tied LM head (vocab, hidden)
        first = cache.layers[0].keys  # (1, kv heads, prompt length, head dim)
        self.length = first.shape[2]
        size = (1, first.shape[1], self.length + max_new_tokens, first.shape[3])
        # zeros, not empty: masked-out slots still enter the attention's products (0 weight × value)
        self.keys = [torch.zeros(size, dtype=first.dtype, device=first.device) for _ in cache.layers]
        self.values = [torch.zeros_like(k) for k in self.keys]
        for layer, keys, values in zip(cache.layers, self.keys, self.values, strict=True):
            keys[:, :, : self.length] = layer.keys
            values[:, :, : self.length] = layer.values
        self.mask = torch.zeros((1, 1, 1, size[2]), dtype=torch.bool, device=first.device)
        self.mask[..., : self.length] = True
        self.forward: Step = self._forward
        if graphs is not None and first.device.type == "cuda":
            self.forward = graphs(self._forward)

    def step(self, token: int) -> Tensor:
        """The next token's logits (vocab,), in the model's dtype, after `token` at the next position."""
        device = self.mask.device
        self.mask[..., self.length] = True
        ids = torch.tensor([[token]], device=device)
        position = torch.tensor([[self.length]], device=device)
        logits = self.forward(ids, position, self.mask)
        self.length += 1
        return logits

    @torch.no_grad()
    def _forward(self, ids: Tensor, position: Tensor, mask: Tensor) -> Tensor:
        model = self.model
        x = model.embed_tokens(ids)
        cos, sin = model.rotary_emb(x, position)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        slot = position.view(1)
        for index, layer in enumerate(model.layers):
            x = x + self._attention(layer.self_attn, layer.input_layernorm(x), cos, sin, slot, mask, index)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return model.norm(x)[0, -1] @ self.head.T

    def _attention(
        self, attn: Any, x: Tensor, cos: Tensor, sin: Tensor, slot: Tensor, mask: Tensor, index: int
    ) -> Tensor:
        head_dim = attn.head_dim
        q = attn.q_norm(attn.q_proj(x).view(1, 1, -1, head_dim)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(1, 1, -1, head_dim)).transpose(1, 2)
        v = attn.v_proj(x).view(1, 1, -1, head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        self.keys[index].index_copy_(2, slot, k)
        self.values[index].index_copy_(2, slot, v)
        out = F.scaled_dot_product_attention(
            q, self.keys[index], self.values[index], attn_mask=mask, scale=attn.scaling, enable_gqa=True
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
