"""zturbo's own Z-Image transformer: the reference math, laid out for speed.

Same function as diffusers' `ZImageTransformer2DModel` for text-to-image (no omni/SigLIP, no
ControlNet), with what makes the reference slow removed: one GEMM for Q‖K‖V and one for W1‖W3
(when the layers are plain `nn.Linear`; `QuantLinear`s stay separate and are just called), RoPE as
real cos/sin arithmetic on fp32 tables cached per sequence layout (the compiler cannot fuse complex
numbers), no attention mask unless the batch really needs one, and elementwise code (RMSNorm in fp32,
modulation, tanh gates, SiLU·up) written so `torch.compile` fuses each run into one kernel. Tensors
are batched `(B, C, h, w)` in and out. Built from a loaded diffusers module by
`zturbo.models.zimage_convert.from_diffusers`, which reuses its parameters.

`forward` optionally takes a `StepCache` (lossy, opt-in first-block caching across sampling steps) and
`controls`: ControlNets (`zturbo.models.controlnet.ControlInput`), each `start`ed after the image is
embedded into a run whose `after_refiner` / `start_main` / `after_layer` add its hints.

Precision (`ZImageDiT.set_precision`): "plain" computes in the weights' dtype (bf16 or fp32); a DiT
whose weights are fp16 starts on "fp16", the fp16-safe path (fp32 residual, power-of-two scaled
branches: `zturbo.models.zimage_fp16`, which says why that is exact); "fp32" computes in fp32 from
whatever the weights are stored as (the NaN watchdog's safer path).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from zturbo.models import zimage_fp16
from zturbo.models.context_parallel import ContextParallel
from zturbo.models.zimage_layout import SequencePlan, SequencePlans, apply_rope, padded_length

# cuDNN attention is ~2x FlashAttention-2 on Hopper at these shapes (measured on an H100); the rest are fallbacks.
DEFAULT_SDPA_BACKENDS = (
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)
PATCH = 2


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm with fp32 statistics, as diffusers' RMSNorm, but rounded once (after the weight) not twice.

    `F.rms_norm` is one fused kernel in eager CUDA (the reference's eight elementwise passes cost ~1 ms
    a layer at 1024²) and decomposes into fusable ops under `torch.compile`. For bf16 the single rounding
    differs from the reference by at most one bf16 ulp per element (more accurate, not less).
    """
    return F.rms_norm(x, weight.shape, weight, eps)


def timestep_features(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features [cos, sin] of t (B,), in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


NORM_NAMES = ("attn_norm1", "attn_norm2", "ffn_norm1", "ffn_norm2", "q_norm", "k_norm")


class ZImageBlock(nn.Module):
    """One transformer block; `modulation` is None for the context refiner (no adaLN, no gates).

    Post-norms on both branches, adaLN as `1 + scale` on the pre-norm and `tanh(gate)` on the branch
    output, no shift terms; QK-norm per head before RoPE.
    """

    attn_norm1: nn.Parameter
    attn_norm2: nn.Parameter
    ffn_norm1: nn.Parameter
    ffn_norm2: nn.Parameter
    q_norm: nn.Parameter
    k_norm: nn.Parameter

    def __init__(
        self,
        linears: dict[str, nn.Module],
        norms: dict[str, nn.Parameter],
        modulation: nn.Module | None,
        *,
        heads: int,
        eps: float,
        qk_eps: float,
    ) -> None:
        super().__init__()
        self.qkv, self.out, self.w13, self.w2 = (linears[k] for k in ("qkv", "out", "w13", "w2"))
        self.modulation = modulation
        for name in NORM_NAMES:
            self.register_parameter(name, norms[name])
        self.heads, self.eps, self.qk_eps = heads, eps, qk_eps
        self.sdpa_backends: tuple[SDPBackend, ...] = DEFAULT_SDPA_BACKENDS
        self.precision = "plain"  # set by ZImageDiT.set_precision
        self.compute_dtype: torch.dtype | None = None  # off the plain path: fp16 or fp32
        self.context: ContextParallel | None = None  # main layers under context parallel (ZImageDiT)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, adaln: Tensor | None
    ) -> Tensor:
        if self.precision != "plain":
            return zimage_fp16.block_forward(self, x, cos, sin, mask, adaln)
        if self.modulation is None:
            h = self.attention(rms_norm(x, self.attn_norm1, self.eps), cos, sin, mask)
            x = x + rms_norm(h, self.attn_norm2, self.eps)
            h = self.feed_forward(rms_norm(x, self.ffn_norm1, self.eps))
            return x + rms_norm(h, self.ffn_norm2, self.eps)
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.modulation(adaln).unsqueeze(1).chunk(4, dim=-1)
        h = self.attention(rms_norm(x, self.attn_norm1, self.eps) * (1.0 + scale_msa), cos, sin, mask)
        x = torch.addcmul(x, gate_msa.tanh(), rms_norm(h, self.attn_norm2, self.eps))
        h = self.feed_forward(rms_norm(x, self.ffn_norm1, self.eps) * (1.0 + scale_mlp))
        return torch.addcmul(x, gate_mlp.tanh(), rms_norm(h, self.ffn_norm2, self.eps))

    def attention(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        batch, seq, _ = h.shape
        q, k, v = self.qkv(h).view(batch, seq, 3, self.heads, -1).unbind(2)
        q = apply_rope(rms_norm(q, self.q_norm, self.qk_eps), cos, sin)
        k = apply_rope(rms_norm(k, self.k_norm, self.qk_eps), cos, sin)
        if self.context is not None:
            return self.out(self.context.attention(q, k, v, mask, self.sdpa_backends).reshape(batch, seq, -1))
        q, k, v = (a.transpose(1, 2) for a in (q, k, v))
        if q.is_cuda:
            with sdpa_kernel(list(self.sdpa_backends), set_priority=True):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(batch, seq, -1))

    def feed_forward(self, h: Tensor) -> Tensor:
        gate, up = self.w13(h).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def call_block(
    block: ZImageBlock, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, adaln: Tensor | None
) -> Tensor:
    """The unit `torch.compile` sees (see zturbo.runtime.compile): one block, passed as an argument."""
    return block(x, cos, sin, mask, adaln)


BlockRunner = Callable[[ZImageBlock, Tensor, Tensor, Tensor, "Tensor | None", "Tensor | None"], Tensor]


class StepCache:
    """First-block step cache for ONE sampling run (ParaAttention's FBCache, TeaCache-style): lossy, opt-in.

    At each model call the DiT runs the refiners and main layer 0, then asks `skip(r)` with that layer's
    residual on the image tokens, r = out₀ − in₀. The rule: rel = mean|r − r_prev| / mean|r_prev|, where
    r_prev is layer 0's residual at the last call that ran the whole stack; if rel < `threshold` (and a
    remainder is cached) layers 1..N−1 are skipped and the cached remainder residual (final hidden −
    layer-0 output, image tokens, from that same full call) is added to layer 0's output. Otherwise every
    layer runs and `store` refreshes both residuals. The first call always runs in full (nothing cached),
    so does any call made while `force_full` is set (the denoiser sets it for the schedule's last step)
    or whose shapes differ from the cached ones.

    One decision per call, for the whole batch (CFG's positive+negative halves and every image of a
    batch together): the skipped layers run as one batched GEMM, so per-sample skipping would need a
    gather/scatter and a new shape bucket per subset. The mean is over the whole batch.

    The decision is a float compare on the host, so each call syncs once with the device after layer 0
    (the CPU cannot queue layer 1 before the GPU finished layer 0): acceptable for an opt-in mode.
    `force_full` may be a device bool tensor (the denoiser's "last steps?" test on a device sigma): it is
    read in that same sync, not in one of its own.
    Costs two image-token activations of memory (r_prev and the remainder). The state lives in this
    object, which the caller owns (one per denoiser, i.e. per `Engine.sample`), never on the module, so
    engines and threads sharing a DiT do not share a cache.
    """

    def __init__(self, threshold: float) -> None:
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"step cache threshold must be a finite number > 0 (got {threshold!r})")
        self.threshold = threshold
        self.force_full: bool | Tensor = False  # set by the caller before a call that must run every layer
        self.calls = 0
        self.skipped = 0
        self.rels: list[float | None] = []  # per call: rel, or None where no comparison was made
        self._first: Tensor | None = None  # layer 0's residual at the last full call
        self._rest: Tensor | None = None  # final hidden − layer-0 output at the last full call

    def skip(self, first_residual: Tensor) -> bool:
        """This call's decision (counts the call); True: skip layers 1..N−1 and add `remainder`."""
        self.calls += 1
        prev, forced = self._first, self.force_full
        if (
            forced is True
            or prev is None
            or self._rest is None
            or prev.shape != first_residual.shape
            or prev.dtype != first_residual.dtype
            or prev.device != first_residual.device
        ):
            self.rels.append(None)
            return False
        change = (first_residual - prev).abs().mean(dtype=torch.float32)
        rel_t = change / prev.abs().mean(dtype=torch.float32)
        if isinstance(forced, Tensor):  # one host sync for both numbers
            rel, forced = torch.stack((rel_t, forced.to(rel_t))).tolist()
        else:
            rel = float(rel_t)  # the host sync
        if forced:
            self.rels.append(None)
            return False
        self.rels.append(rel)
        if rel < self.threshold:  # nan (0/0) → full
            self.skipped += 1
            return True
        return False

    @property
    def remainder(self) -> Tensor:
        if self._rest is None:
            raise RuntimeError("no remainder residual cached yet")
        return self._rest

    def store(self, first_residual: Tensor, remainder: Tensor) -> None:
        """After a full call: layer 0's residual and the rest of the stack's residual, image tokens."""
        self._first, self._rest = first_residual, remainder


@dataclass(frozen=True)
class DiTSettings:
    """The few numbers the forward pass needs besides the weights (read off the diffusers config)."""

    in_channels: int
    norm_eps: float
    t_scale: float
    t_dtype: torch.dtype  # dtype the timestep MLP computes in (the weight's, or QuantLinear's compute dtype)
    axes_dims: tuple[int, ...]
    axes_lens: tuple[int, ...]
    rope_theta: float


class ZImageDiT(nn.Module):
    """The whole transformer: `forward(x (B,C,h,w), t (B,), captions [(L_i, cap_dim)]) -> (B,C,h,w)`."""

    batched_api: ClassVar[bool] = True  # transformer_forward passes tensors, not lists

    def __init__(
        self,
        settings: DiTSettings,
        *,
        embedders: dict[str, nn.Module],
        pad_tokens: dict[str, nn.Parameter],
        cap_norm: nn.Parameter,
        noise_refiner: list[ZImageBlock],
        context_refiner: list[ZImageBlock],
        layers: list[ZImageBlock],
    ) -> None:
        super().__init__()
        self.settings = settings
        self.x_embedder, self.cap_linear, self.t_mlp = (embedders[k] for k in ("x", "cap", "t"))
        self.final_modulation, self.final_linear = embedders["final_modulation"], embedders["final"]
        self.x_pad_token, self.cap_pad_token = pad_tokens["x"], pad_tokens["cap"]
        self.cap_norm = cap_norm
        self.noise_refiner = nn.ModuleList(noise_refiner)
        self.context_refiner = nn.ModuleList(context_refiner)
        self.layers = nn.ModuleList(layers)
        self.plans = SequencePlans(list(settings.axes_dims), list(settings.axes_lens), settings.rope_theta)
        self.run_block: BlockRunner = call_block  # replaced by a compiled version in compile modes
        self.precision = "plain"
        self.context: ContextParallel | None = None
        self.set_precision("fp16" if settings.t_dtype == torch.float16 else "plain")

    def set_precision(self, precision: str) -> None:
        """ "plain" | "fp16" (fp16-safe; the weights must compute in fp16) | "fp32" (module docstring)."""
        if precision not in zimage_fp16.PRECISIONS:
            choices = ", ".join(zimage_fp16.PRECISIONS)
            raise ValueError(f"precision must be one of {choices} (got {precision!r})")
        if precision == "fp16" and self.settings.t_dtype != torch.float16:
            raise ValueError(
                f"the fp16-safe path needs fp16 weights (they compute in {self.settings.t_dtype})"
            )
        if precision != "plain":
            for block in self.blocks():
                zimage_fp16.check_block(block)
        if precision == "fp16":
            zimage_fp16.check_fp16_range(self)
        if precision != "plain" and self.context is not None:
            raise ValueError(f"context parallel runs the plain precision only (asked for {precision!r})")
        dtype = torch.float16 if precision == "fp16" else torch.float32
        self.precision = precision
        for block in self.blocks():
            block.precision, block.compute_dtype = precision, dtype

    def set_context_parallel(self, context: ContextParallel | None) -> None:
        """Split the main layers' sequence over `context`'s processes (None: back to one process).

        Every rank calls `forward` with the same inputs (zturbo.runtime.context_launch broadcasts them)."""
        if context is not None:
            context.check_heads(min(block.heads for block in self.blocks()))
            if self.precision != "plain":
                raise ValueError(
                    f"context parallel runs the plain precision only (this DiT is on {self.precision!r})"
                )
        self.context = context
        for block in self.blocks()[-len(self.layers) :]:  # the main layers
            block.context = context

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype callers pass x, t and captions in: fp32 off the plain path (None: the weights')."""
        return None if self.precision == "plain" else torch.float32

    def embed(self, layer: nn.Module, x: Tensor) -> Tensor:
        """An embedder or the final layer's projection: as is on the plain path, else fp32 out."""
        if self.precision == "plain":
            return layer(x)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        return zimage_fp16.run_linear(layer, x, dtype).float()

    def blocks(self) -> list[ZImageBlock]:
        return [*self.noise_refiner, *self.context_refiner, *self.layers]

    def set_sdpa_backends(self, backends: tuple[SDPBackend, ...]) -> None:
        """Attention kernels to try, in priority order (CUDA only)."""
        for block in self.blocks():
            block.sdpa_backends = tuple(backends)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        captions: list[Tensor],
        step_cache: StepCache | None = None,
        controls: Sequence[Any] = (),
    ) -> Tensor:
        """`step_cache` (None: every layer runs, the exact path) may skip main layers 1..N−1: see StepCache.
        `controls`: ControlNet inputs whose hints are added (see the module docstring)."""
        batch, _, height, width = x.shape
        if len(captions) != batch:
            raise ValueError(f"{len(captions)} captions for a batch of {batch}")
        if height % PATCH or width % PATCH:
            raise ValueError(f"latent size {height}x{width} is not a multiple of {PATCH}")
        plan = self.plans.get(height // PATCH, width // PATCH, [len(c) for c in captions], x.device)
        config = self.settings
        features = timestep_features(t * config.t_scale)
        if self.precision == "plain":
            adaln = self.t_mlp(features.to(config.t_dtype)).to(x.dtype)
        else:
            adaln = self.embed(self.t_mlp, features)
        image = self.embed_image(x, plan)
        runs = [control.start(self, image, plan, adaln) for control in controls]
        cos, sin = plan.image_rope
        # The ignores below: nn.ModuleList is not generic, its items type as Module (ZImageBlocks here).
        for j, block in enumerate(self.noise_refiner):
            image = self.run_block(block, image, cos, sin, None, adaln)  # type: ignore[arg-type]
            for run in runs:
                image = run.after_refiner(j, image)
        caption = self.embed_captions(captions, plan)
        cos, sin = plan.caption_rope
        for block in self.context_refiner:
            caption = self.run_block(block, caption, cos, sin, plan.caption_mask, None)  # type: ignore[arg-type]
        unified = torch.cat([image, caption], dim=1)
        for run in runs:
            run.start_main(unified, caption)
        hidden = self.main_layers(unified, plan, adaln, step_cache, runs)
        return self.unpatchify(self.final_layer(hidden, adaln), height, width)

    def main_layers(
        self,
        x: Tensor,
        plan: SequencePlan,
        adaln: Tensor,
        step_cache: StepCache | None,
        runs: Sequence[Any] = (),
    ) -> Tensor:
        """The main layers over the unified sequence; returns the image tokens (all the final layer reads).

        With a `step_cache`, layer 0 runs, then the cache decides (Python between the blocks, so it works
        with the compiled block function too) whether layers 1..N−1 run or their cached residual is added.
        """
        cos, sin = plan.rope
        n = plan.image_len
        if self.context is not None:
            return self.parallel_layers(x, plan, adaln, step_cache, runs)

        def layer(i: int, h: Tensor) -> Tensor:
            h = self.run_block(self.layers[i], h, cos, sin, plan.mask, adaln)  # type: ignore[arg-type]
            for run in runs:  # ControlNet hints after their layers
                h = run.after_layer(i, h)
            return h

        if step_cache is None:
            for i in range(len(self.layers)):
                x = layer(i, x)
            return x[:, :n]
        first = layer(0, x)
        first_residual = first[:, :n] - x[:, :n]
        if step_cache.skip(first_residual):
            return first[:, :n] + step_cache.remainder
        hidden = first
        for i in range(1, len(self.layers)):
            hidden = layer(i, hidden)
        step_cache.store(first_residual, hidden[:, :n] - first[:, :n])
        return hidden[:, :n]

    def parallel_layers(
        self, x: Tensor, plan: SequencePlan, adaln: Tensor, step_cache: StepCache | None, runs: Sequence[Any]
    ) -> Tensor:
        """`main_layers` with the sequence split over `self.context` (models/context_parallel.py)."""
        context = self.context
        assert context is not None
        if step_cache is not None or runs:
            raise ValueError("context parallel runs without the step cache and without ControlNets")
        total = x.shape[1]
        context.begin(total)
        cos, sin = (context.shard(a) for a in plan.rope)
        h = context.shard(x)
        for block in self.blocks()[-len(self.layers) :]:
            h = self.run_block(block, h, cos, sin, plan.mask, adaln)
        return context.gather(h, total)[:, : plan.image_len]

    def embed_image(self, x: Tensor, plan: SequencePlan) -> Tensor:
        """Patchify 2×2 (features ordered ph, pw, c), embed, append learned pad tokens to a multiple of 32."""
        batch, channels, height, width = x.shape
        patches = x.view(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, plan.image_len, PATCH * PATCH * channels)
        tokens = self.embed(self.x_embedder, patches)
        pads = self.x_pad_token.expand(batch, plan.image_padded - plan.image_len, -1)
        return torch.cat([tokens, pads.to(tokens.dtype)], dim=1)

    def embed_captions(self, captions: list[Tensor], plan: SequencePlan) -> Tensor:
        """Embed each caption's real rows; pad rows (to 32, and to the batch's widest) get the pad token."""
        lengths = [len(c) for c in captions]
        features = torch.cat(captions)  # fp32 off the plain path: Qwen3's hidden states can exceed fp16
        normed = rms_norm(features, self.cap_norm.to(features.dtype), self.settings.norm_eps)
        tokens = self.embed(self.cap_linear, normed)
        if len(set(lengths)) == 1:
            tokens = tokens.view(len(captions), lengths[0], -1)
            pads = self._cap_pads(len(captions), plan.caption_width - lengths[0]).to(tokens.dtype)
            return torch.cat([tokens, pads], dim=1)
        rows = [
            torch.cat([part, self._cap_pads(1, plan.caption_width - len(part))[0].to(part.dtype)])
            for part in tokens.split(lengths)
        ]
        return torch.stack(rows)

    def _cap_pads(self, batch: int, count: int) -> Tensor:
        return self.cap_pad_token.expand(batch, count, -1)

    def final_layer(self, x: Tensor, adaln: Tensor) -> Tensor:
        scale = 1.0 + self.embed(self.final_modulation, F.silu(adaln))
        return self.embed(self.final_linear, F.layer_norm(x, x.shape[-1:], eps=1e-6) * scale.unsqueeze(1))

    def unpatchify(self, tokens: Tensor, height: int, width: int) -> Tensor:
        batch, channels = tokens.shape[0], self.settings.in_channels
        grid = tokens.view(batch, height // PATCH, width // PATCH, PATCH, PATCH, channels)
        return grid.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)


__all__ = [
    "DEFAULT_SDPA_BACKENDS",
    "StepCache",
    "ZImageBlock",
    "ZImageDiT",
    "call_block",
    "padded_length",
    "rms_norm",
]
