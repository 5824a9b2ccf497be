"""The DiT's fp16-safe path (GPUs without bf16) and its fp32-compute fallback.

Z-Image's activations leave fp16's range (largest finite value 65504; the released weights reach
~3.4e5), and plain fp16 turns them into inf, then NaN, then a black image. Where, from the block math
(docs: zimage-model.md §1; N = RMSNorm with weight w, D = 3840):

    x ← x + tanh(g₁)·N₂(Attn(N₁(x)·(1+s₁)))              Attn: QK-normed heads, out-projection
    x ← x + tanh(g₂)·N₄(W₂(silu(W₁h) ⊙ W₃h)),   h = N₃(x)·(1+s₂)

1. The residual stream x is a running sum of 2 updates a block, each up to |tanh g|·|w|·√D per
   element; nothing ever normalises x itself, so it grows with depth (the outlier channels of trained
   DiTs). It is kept in fp32, with every add, norm statistic, modulation and gate: B·S·D·4 bytes,
   ~70 MB at 1024², the only thing here that costs memory.
2. A branch input h = N(x)·(1+s) is normalised, so bounded (≤ √D·max|w·(1+s)|), but not by 65504 in
   general; a GEMM output |Wh|ᵢ ≤ ‖Wᵢ‖₁·max|h| can be larger still.
3. The FFN's hidden silu(W₁h) ⊙ W₃h is a product of two GEMM outputs (the site ComfyUI#11057 and SD.Next
   PR #4753 clamp), and W₂ sums 10240 of them: this is where the 3.4e5 appear.
4. The attention output is a convex combination of the rows of V (|o| ≤ max|v|), but the
   out-projection can grow it like any GEMM.

The fix, and why it is exact: every fp16 tensor of a branch holds c·(its true value) for a power of
two c = 2⁻ᵉ chosen on the device so that the largest magnitude of each GEMM's input lies in [1, 2);
fp32 code divides c out again (exact) wherever the branch leaves fp16. That works because each
branch is linear where the scales sit: the GEMMs have no bias (W(c·h) = c·Wh), attention is linear in
V (Q and K are divided back before their QK-norms), and in the FFN the scale is applied after the
silu, where W₂ is linear. c is one per tensor for the attention input (V mixes tokens) and one per
token after the attention and after the silu (the out-projection, W₂ and the post-norms act on each
row alone). A power of two commutes with rounding while values stay normal, so the result is bit for
bit what fp16 with an unbounded exponent would compute (values below 2⁻¹⁴ of a row's largest become
subnormal: absolute error ≤ 2⁻²⁵ of that largest value). No GEMM output can overflow unless a weight
row's L1 norm exceeds 32752 (trained rows: ~10²). The post-norms, which make each branch's
contribution independent of its scale anyway, see the unscaled values in fp32. No clamps: nothing
saturates, so nothing changes in range (a clamp to ±65504 before a norm changes the branch's direction
wherever it fires). GEMMs and attention run in fp16; modulation, QK-norm, RoPE, the FFN's
silu·product and the post-norms in fp32 (the softmax statistics inside the fused kernels are fp32).

What remains is fp16's rounding (unit roundoff u = 2⁻¹¹, three bits finer than bf16's 2⁻⁸): a few
roundings per branch (GEMM inputs and outputs), adding up along the residual (tests/models/
test_zimage_fp16.py states and checks the bound).

`fp32` precision is the watchdog's safer path and needs no extra memory: the same code with every
layer computed in fp32 from its stored weights, expanded one layer at a time (bf16, fp16, GGUF,
fp8 and LoRA side paths alike: `linear_fp32`), no scaling.

The embedders and the final layer (LayerNorm then a 64-wide projection) read normalised or small
inputs; they run in the compute dtype from fp32 inputs, their outputs continue in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import sdpa_kernel

from zturbo.errors import InputError
from zturbo.models.zimage_layout import apply_rope

PRECISIONS = ("plain", "fp16", "fp32")  # plain: the weights' dtype throughout (bf16 or fp32)
_E_RANGE = 60  # scales stay within 2^±60: exact powers of two, and nothing they touch leaves fp32's range


def pow2_inverse(amax: Tensor) -> Tensor:
    """2⁻ᵉ with e = ⌊log₂ amax⌋ (clamped to ±60): the exact power of two that puts `amax` in [1, 2).

    Built from the exponent bits (no log/exp approximations, so exact on every device); amax = 0 gives
    2⁶⁰ (a zero row stays zero), inf/NaN give 2⁻⁶⁰ (they stay non-finite for the watchdog).
    """
    biased = (amax.float().contiguous().view(torch.int32) >> 23) & 0xFF
    biased = biased.clamp(127 - _E_RANGE, 127 + _E_RANGE)
    return ((254 - biased) << 23).view(torch.float32)


def amax(x: Tensor, dim: int | None = None) -> Tensor:
    """Largest magnitude (over `dim`, kept; or all), in fp32, without an |x| temporary."""
    low, high = torch.aminmax(x) if dim is None else torch.aminmax(x, dim=dim, keepdim=True)
    return torch.maximum(-low, high).float()


def rms_norm32(y: Tensor, weight: Tensor, eps: float, scale: Tensor | None = None) -> Tensor:
    """RMSNorm in fp32 of y / scale (y holds scale·ŷ, scale a power of two: the division is exact)."""
    if scale is not None:  # one pass: a dimensioned fp32 divisor promotes fp16 to fp32
        y = torch.div(y, scale.reshape(1) if scale.dim() == 0 else scale)
    return F.rms_norm(y.float(), weight.shape, weight.float(), eps)


def scaled(x: Tensor, c: Tensor, dtype: torch.dtype) -> Tensor:
    """x·c (computed in fp32) in `dtype`, in one pass where the eager path allows."""
    c = c.reshape(1) if c.dim() == 0 else c
    if torch.compiler.is_compiling():
        return (x * c).to(dtype)  # the compiler fuses it anyway
    out = torch.empty(torch.broadcast_shapes(x.shape, c.shape), dtype=dtype, device=x.device)
    return torch.mul(x, c, out=out)


def linear_fp32(layer: nn.Module, x: Tensor) -> Tensor:
    """`layer(x)` in fp32 from the layer's stored weights, expanded for this call only.

    Handles what zturbo's DiT holds: `nn.Linear`, `QuantLinear` (its `weight` expands the stored form),
    `SplitLinear` (`parts`), `PatchedLinear` (`base` plus LoRA side `terms` on row ranges, as
    zturbo.patches.apply defines them), `nn.Sequential` and `nn.SiLU` (the timestep MLP).
    """
    x = x.float()
    if isinstance(layer, nn.Sequential):
        for part in layer:
            x = linear_fp32(part, x)
        return x
    if isinstance(layer, nn.SiLU):
        return F.silu(x)
    parts = getattr(layer, "parts", None)
    if parts is not None:
        return torch.cat([linear_fp32(p, x) for p in parts], dim=-1)
    base, terms = getattr(layer, "base", None), getattr(layer, "terms", None)
    if base is not None and terms is not None:
        y = linear_fp32(base, x)
        for start, stop, down, up in terms:
            h = x.to(up.device)
            delta = (h @ down.float().t()) @ up.float().t() if down is not None else h @ up.float().t()
            y[..., start:stop] += delta
        return y
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(f"cannot compute a {type(layer).__name__} in fp32: it exposes no weight")
    bias = getattr(layer, "bias", None)
    return F.linear(x, weight.float(), None if bias is None else bias.float())


def run_linear(layer: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """`layer(x)` computed in `dtype`: fp32 through `linear_fp32`, else the layer as it is."""
    if dtype == torch.float32:
        return linear_fp32(layer, x)
    return layer(x.to(dtype))


def _has_bias(layer: nn.Module) -> bool:
    return any(isinstance(getattr(m, "bias", None), Tensor) for m in layer.modules())


def check_block(block: nn.Module) -> None:
    """The scaling argument needs bias-free branch GEMMs (W(c·h) = c·Wh): Z-Image's are."""
    for name in ("qkv", "out", "w13", "w2"):
        if _has_bias(getattr(block, name)):
            raise ValueError(f"the fp16-safe path needs bias-free block projections ({name} has a bias)")


def check_fp16_range(model: nn.Module) -> None:
    """The small tensors (norm weights, biases, pad tokens) are where a trained value could exceed 65504
    and have turned into inf when the weights were cast to fp16; matrices hold values of order 1."""
    small = [p for p in model.parameters() if p.numel() <= 1 << 16 and p.is_floating_point()]
    if small and not bool(torch.stack([torch.isfinite(p).all() for p in small]).all()):
        raise InputError(
            "this diffusion model holds norm weights, biases or pad tokens beyond fp16's range (65504): "
            "use --dtype bf16 or fp32"
        )


def block_forward(block, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, adaln: Tensor | None):
    """One `ZImageBlock` with an fp32 residual: fp16-safe (`block.precision == "fp16"`) or fp32."""
    dtype = block.compute_dtype
    x = x.float()
    if block.modulation is None:
        scale_msa = gate_msa = scale_mlp = gate_mlp = None
    else:
        assert adaln is not None, "a modulated block needs the adaLN input"
        mod = run_linear(block.modulation, adaln, dtype).float().unsqueeze(1)
        scale_msa, gate_msa, scale_mlp, gate_mlp = mod.chunk(4, dim=-1)
    h = rms_norm32(x, block.attn_norm1, block.eps)
    y, c = attention(block, h if scale_msa is None else h * (1.0 + scale_msa), cos, sin, mask)
    x = _gated_add(x, gate_msa, rms_norm32(y, block.attn_norm2, block.eps, c))
    h = rms_norm32(x, block.ffn_norm1, block.eps)
    y, c = feed_forward(block, h if scale_mlp is None else h * (1.0 + scale_mlp))
    return _gated_add(x, gate_mlp, rms_norm32(y, block.ffn_norm2, block.eps, c))


def _gated_add(x: Tensor, gate: Tensor | None, update: Tensor) -> Tensor:
    return x + update if gate is None else torch.addcmul(x, gate.tanh(), update)


def _scaled_input(block, h: Tensor) -> tuple[Tensor, Tensor | None]:
    """h as the GEMM input: fp16-safe scales it into [1, 2) (one power of two) and casts; fp32 as is."""
    if block.precision != "fp16":
        return h, None
    c = pow2_inverse(amax(h))
    return scaled(h, c, block.compute_dtype), c


def _times(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a * b


def attention(
    block, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """(out-projection output y, its scale c: y = c·ŷ, or None when unscaled)."""
    batch, seq, _ = h.shape
    dtype = block.compute_dtype
    h, c = _scaled_input(block, h)  # one c for all tokens: V is mixed across them
    q, k, v = run_linear(block.qkv, h, dtype).view(batch, seq, 3, block.heads, -1).unbind(2)
    q = apply_rope(rms_norm32(q, block.q_norm, block.qk_eps, c), cos, sin).to(dtype)
    k = apply_rope(rms_norm32(k, block.k_norm, block.qk_eps, c), cos, sin).to(dtype)
    q, k, v = (a.transpose(1, 2) for a in (q, k, v.to(dtype)))
    if q.is_cuda:
        with sdpa_kernel(list(block.sdpa_backends), set_priority=True):
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = o.transpose(1, 2).reshape(batch, seq, -1)  # = c·ô: attention is linear in V
    if block.precision == "fp16":  # per token: the out-projection and N₂ act on each row alone
        c_o = pow2_inverse(amax(o, dim=-1))
        o, c = scaled(o, c_o, dtype), _times(c, c_o)
    return run_linear(block.out, o, dtype), c


def feed_forward(block, h: Tensor) -> tuple[Tensor, Tensor | None]:
    """(W₂ output y, its scale c: y = c·ŷ, or None when unscaled)."""
    dtype = block.compute_dtype
    h, c = _scaled_input(block, h)
    gate, up = run_linear(block.w13, h, dtype).chunk(2, dim=-1)  # c·(W₁h, W₃h)
    if block.precision != "fp16":
        return run_linear(block.w2, F.silu(gate) * up, dtype), None
    assert c is not None  # fp16: `_scaled_input` scaled h by c
    p = torch.div(gate, c.reshape(1))  # W₁h in fp32 (one pass: the dimensioned divisor promotes)
    p = F.silu(p, inplace=True).mul_(up)  # = c·silu(W₁h)·W₃h, in fp32: the product may exceed fp16
    c_p = pow2_inverse(amax(p, dim=-1))  # per token: W₂ and N₄ act on each row alone
    return run_linear(block.w2, scaled(p, c_p, dtype), dtype), c * c_p
