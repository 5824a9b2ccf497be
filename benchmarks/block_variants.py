"""Microbenchmark: one full-size Z-Image main block at 1024², compiled, variant by variant.

    python benchmarks/block_variants.py [--blocks 8] [--compile-cache DIR]

Random bf16 weights of the released sizes (dim 3840, 30 heads of 128, FFN 10240), 4,224 tokens, batch 1;
no model files needed. Each variant is `torch.compile`d like `zturbo.runtime.compile` does and timed
as a CUDA graph of `--blocks` blocks in a row (ms a block: what a step pays per layer), then profiled
uncaptured (kernel ms a block by category), so the launch-free time and the kernel sum can be compared.
Also times attention alone per input layout. Prints a table and writes
benchmarks/results/<date>-<device>-block_variants.json. `--small` runs tiny shapes eagerly on the CPU
(a smoke test of the script, no timings worth reading).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from dit_step import time_ms  # the sibling script's CUDA-event timer (this folder is on sys.path)
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from zturbo.models.zimage_dit import NORM_NAMES, ZImageBlock, call_block, rms_norm
from zturbo.models.zimage_layout import rope_real
from zturbo.quant.fp8 import quantize_to_fp8
from zturbo.quant.linear import QuantLinear
from zturbo.runtime.compile import enable_compile_caches


def rope_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on split halves (i, i + D/2): the same rotation as pairs (2i, 2i+1) once the Q/K rows of
    the QKV weight and the q/k norm weights are permuted per head — scores are unchanged because Q and
    K get the same permutation. Loads two contiguous halves instead of interleaved pairs."""
    first, second = x.float().chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1).to(x.dtype)


def rope_stacked(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """zturbo's compiled RoPE before 2026-11-25 (session 3): (real, imag) pairs rebuilt with `stack`."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class VariantBlock(ZImageBlock):
    """`ZImageBlock` with the attention's RoPE form and input layout chosen per variant."""

    rope: Callable[[Tensor, Tensor, Tensor], Tensor] = staticmethod(rope_real)
    contiguous: bool = False

    def attention(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        batch, seq, _ = h.shape
        q, k, v = self.qkv(h).view(batch, seq, 3, self.heads, -1).unbind(2)
        q = self.rope(rms_norm(q, self.q_norm, self.qk_eps), cos, sin)
        k = self.rope(rms_norm(k, self.k_norm, self.qk_eps), cos, sin)
        q, k, v = (a.transpose(1, 2) for a in (q, k, v))
        if self.contiguous:
            q, k, v = (a.contiguous() for a in (q, k, v))
        if q.is_cuda:
            with sdpa_kernel(list(self.sdpa_backends), set_priority=True):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(batch, seq, -1))


@dataclass(frozen=True)
class Variant:
    rope: Callable[[Tensor, Tensor, Tensor], Tensor] = rope_real
    contiguous: bool = False  # q/k/v copied to contiguous (B, H, S, D) before attention
    inductor: tuple[tuple[str, object], ...] = ()  # torch._inductor.config overrides
    fp8: bool = False  # row-scaled fp8 linears (`_scaled_mm`)


MULTI_KERNEL = (("triton.multi_kernel", 1),)  # persistent row reductions up to 16k, picked by timing
VARIANTS = {
    "stacked pairs rope (before)": Variant(rope=rope_stacked),
    "neighbour-swap rope (rope_real now)": Variant(),
    "half-split rope (permuted weights)": Variant(rope=rope_half),
    "neighbour swap + multi-kernel": Variant(inductor=MULTI_KERNEL),
    "contiguous q/k/v": Variant(contiguous=True),
    "fp8 stacked pairs rope (before)": Variant(rope=rope_stacked, fp8=True),
    "fp8 neighbour swap": Variant(fp8=True),
    "fp8 neighbour swap + multi-kernel": Variant(inductor=MULTI_KERNEL, fp8=True),
    "fp8 half-split rope": Variant(rope=rope_half, fp8=True),
}


def to_fp8(block: VariantBlock) -> VariantBlock:
    """A copy of `block` whose four linears are row-scaled fp8 `QuantLinear`s (`_scaled_mm`), as
    `--weight-dtype fp8_e4m3fn_fast` loads them."""
    linears = {
        name: QuantLinear(quantize_to_fp8(getattr(block, name).weight), use_scaled_mm=True)
        for name in ("qkv", "out", "w13", "w2")
    }
    norms = {n: getattr(block, n) for n in NORM_NAMES}
    return VariantBlock(
        linears, norms, block.modulation, heads=block.heads, eps=block.eps, qk_eps=block.qk_eps
    )


def make_block(dim: int, heads: int, hidden: int, device: str, dtype: torch.dtype) -> VariantBlock:
    def linear(i: int, o: int, bias: bool = False) -> nn.Linear:
        layer = nn.Linear(i, o, bias=bias, device=device, dtype=dtype)
        nn.init.normal_(layer.weight, std=i**-0.5)
        return layer

    linears = {
        "qkv": linear(dim, 3 * dim),
        "out": linear(dim, dim),
        "w13": linear(dim, 2 * hidden),
        "w2": linear(hidden, dim),
    }
    norms = {
        n: nn.Parameter(
            1
            + 0.1
            * torch.randn(dim // heads if n in ("q_norm", "k_norm") else dim, device=device, dtype=dtype)
        )
        for n in NORM_NAMES
    }
    modulation = linear(min(dim, 256), 4 * dim, bias=True)
    return VariantBlock(linears, norms, modulation, heads=heads, eps=1e-5, qk_eps=1e-5).requires_grad_(False)


def graph_ms(fn: Callable[[], Tensor], reps: int = 20) -> float:
    """Median ms of one replay of a CUDA graph of `fn` (compiled and warmed first)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_ms(graph.replay, warmup=1, reps=reps)[0]


def kernel_ms(fn: Callable[[], object], calls: int) -> dict[str, float]:
    """Kernel time per call of `fn` by category (torch.profiler, uncaptured)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.device_type.name != "CUDA":
            continue
        name = event.key
        kind = (
            "gemm"
            if ("nvjet" in name or "gemm" in name.lower() or "cutlass" in name)
            else "attention"
            if ("sdpa" in name or "flash" in name or "fmha" in name)
            else "triton"
            if name.startswith("triton")
            else "other"
        )
        out[kind] += event.device_time_total / 1000 / calls
        out[f"k:{name[:90]}"] += event.device_time_total / 1000 / calls
    return dict(out)


def run_variants(args, rows: list[dict]) -> None:
    dim, heads, hidden, tokens = (3840, 30, 10240, 4224) if not args.small else (64, 2, 128, 40)
    device = "cuda" if not args.small else "cpu"
    dtype = torch.bfloat16 if not args.small else torch.float32
    torch.manual_seed(0)
    block = make_block(dim, heads, hidden, device, dtype)
    x = torch.randn(1, tokens, dim, device=device, dtype=dtype)
    adaln = torch.randn(1, min(dim, 256), device=device, dtype=dtype)
    angles = torch.rand(1, tokens, dim // heads // 2, device=device) * 6.28
    cos, sin = angles.cos(), angles.sin()
    reference = None
    blocks = {False: block, True: to_fp8(block)}
    for name, variant in VARIANTS.items():
        block = blocks[variant.fp8]
        block.rope, block.contiguous = variant.rope, variant.contiguous
        row: dict = {"variant": name}
        if args.small:
            out = call_block(block, x, cos, sin, None, adaln)
        else:
            with torch._inductor.config.patch(dict(variant.inductor)):
                out = time_compiled(block, variant, x, cos, sin, adaln, args.blocks, row)
        comparable = variant.rope is not rope_half and not variant.fp8
        row["rel_vs_first"] = None if reference is None or not comparable else rel(out, reference)
        reference = out if reference is None else reference
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "kernel_ms_per_block"}), flush=True)


def time_compiled(block, variant, x, cos, sin, adaln, blocks: int, row: dict) -> Tensor:
    """Compile the block function for `variant`, fill `row` with compile time, graph ms and kernels."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(call_block, dynamic=False, fullgraph=not variant.fp8)
    started = time.perf_counter()
    out = compiled(block, x, cos, sin, None, adaln)
    torch.cuda.synchronize()
    row["compile_s"] = round(time.perf_counter() - started, 1)
    row["graph_breaks"] = {str(k): v for k, v in torch._dynamo.utils.counters["graph_break"].items()}

    def chain() -> Tensor:
        h = x
        for _ in range(blocks):
            h = compiled(block, h, cos, sin, None, adaln)
        return h

    row["graph_ms_per_block"] = round(graph_ms(chain) / blocks, 3)
    kernels = kernel_ms(lambda: compiled(block, x, cos, sin, None, adaln), 5)
    row["kernel_ms_per_block"] = {k: round(v, 3) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])}
    return out


def attention_rows(args) -> list[dict]:
    """cuDNN / FlashAttention alone on q, k, v as strided views of one QKV buffer vs contiguous (B,H,S,D)."""
    if args.small:
        return []
    tokens, heads, head_dim = 4224, 30, 128
    qkv = torch.randn(1, tokens, 3, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    strided = [a.transpose(1, 2) for a in qkv.unbind(2)]
    contiguous = [a.contiguous() for a in strided]
    rows = []
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        for layout, tensors in (("strided (B,S,H,D) views", strided), ("contiguous (B,H,S,D)", contiguous)):
            with sdpa_kernel([backend]):
                ms = time_ms(lambda t=tensors: F.scaled_dot_product_attention(*t), warmup=1, reps=30)[0]
            rows.append({"attention": backend.name, "layout": layout, "ms": round(ms, 3)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def rel(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=8, help="blocks per CUDA graph")
    parser.add_argument("--compile-cache", type=Path, default=None)
    parser.add_argument("--small", action="store_true", help="tiny CPU smoke run of the script")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.compile_cache:
        enable_compile_caches(args.compile_cache)
    rows: list[dict] = []
    with torch.no_grad():
        run_variants(args, rows)
        attention = attention_rows(args)
    print(
        f"\n{'variant':<40}{'graph ms/block':>15}{'kernels ms':>11}{'gemm':>7}{'attn':>7}{'triton':>7}{'rel':>9}"
    )
    for r in rows:
        k = r.get("kernel_ms_per_block", {})
        total = sum(v for n, v in k.items() if not n.startswith("k:"))
        diff = "-" if r["rel_vs_first"] is None else f"{r['rel_vs_first']:.1e}"
        print(
            f"{r['variant']:<40}{r.get('graph_ms_per_block', float('nan')):>15.3f}{total:>11.3f}"
            f"{k.get('gemm', 0):>7.3f}{k.get('attention', 0):>7.3f}{k.get('triton', 0):>7.3f}{diff:>9}"
        )
    if args.small:
        return
    device = torch.cuda.get_device_name()
    today = dt.date.today().isoformat()
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{today}-{device.replace(' ', '_')}-block_variants.json"
    data = {
        "device": device,
        "date": today,
        "torch": torch.__version__,
        "tokens": 4224,
        "blocks_per_graph": args.blocks,
        "rows": rows,
        "attention": attention,
    }
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
