"""Speed modes for the diffusion transformer: which implementation runs, compiled or not, graphed or not.

- `reference`: diffusers' class as loaded (the parity baseline; what zturbo ran before issue 5).
- `eager` (default): zturbo's DiT (`zturbo.models.zimage_dit`): fused Q‖K‖V and W1‖W3 GEMMs, cuDNN
  attention first, no mask when nothing is batch-padded, real-valued RoPE. Same math as the reference
  (fp32 parity ≤ 1e-5), no warm-up.
- `compile`: eager plus `torch.compile` of the block function, shapes static and bucketed by
  (resolution, batch, caption lengths): the RMSNorm/modulation/RoPE/gate/SiLU·up work between the GEMMs
  fuses into a few kernels. The first step at a new size compiles (tens of seconds cold; a few with
  the persistent cache warm).
- `max`: compile plus a CUDA graph of the whole transformer forward per bucket (no launch gaps).

Options travel as a `SpeedOptions` object; the only process-wide state touched is torch's own
compiler config (cache folder, recompile limit), set when compiling is first enabled.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend

from zturbo.errors import InputError
from zturbo.models.zimage_convert import SplitLinear, from_diffusers
from zturbo.models.zimage_dit import DEFAULT_SDPA_BACKENDS, ZImageDiT, call_block

log = logging.getLogger(__name__)

SPEED_MODES = ("reference", "eager", "compile", "max")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
RECOMPILE_LIMIT = 64  # 3 block graphs per (resolution, batch, caption-lengths) bucket


def default_cache_dir() -> Path:
    """Persistent compiler cache: env ZTURBO_COMPILE_CACHE, else ~/.cache/zturbo/inductor."""
    env = os.environ.get("ZTURBO_COMPILE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "zturbo" / "inductor"


@dataclass(frozen=True)
class SpeedOptions:
    """How the DiT runs. `cuda_graphs=None` means: on in `max` mode, on CUDA."""

    mode: str = "eager"
    compile_mode: str = "default"  # "max-autotune-no-cudagraphs" also autotunes GEMMs (minutes cold)
    cache_dir: Path | None = None  # None → default_cache_dir()
    cuda_graphs: bool | None = None
    sdpa_backends: tuple[SDPBackend, ...] = field(default=DEFAULT_SDPA_BACKENDS)

    def __post_init__(self) -> None:
        if self.mode not in SPEED_MODES:
            raise InputError(f"speed must be one of {', '.join(SPEED_MODES)} (got {self.mode!r})")
        if self.compile_mode not in COMPILE_MODES:
            raise InputError(
                f"compile mode must be one of {', '.join(COMPILE_MODES)} (got {self.compile_mode!r})"
            )

    @property
    def compiles(self) -> bool:
        return self.mode in ("compile", "max")

    @property
    def graphs(self) -> bool:
        return self.mode == "max" if self.cuda_graphs is None else self.cuda_graphs


def accelerate(module: nn.Module, options: SpeedOptions) -> nn.Module:
    """The module to run for `options`: the reference as is, or zturbo's DiT (converted once) set up.

    Accepts a diffusers transformer (converted and spent), a `ZImageDiT` or a `GraphedDiT`, so a
    benchmark can switch modes on one set of weights.
    """
    if options.mode == "reference":
        return module
    dit = module.dit if isinstance(module, GraphedDiT) else module
    if not isinstance(dit, ZImageDiT):
        if _has_hooks(dit):
            log.warning(
                "the DiT carries forward hooks (offloading?); speed %r falls back to reference", options.mode
            )
            return module
        dit = from_diffusers(dit)
    dit.set_sdpa_backends(options.sdpa_backends)
    if not options.compiles:
        dit.run_block = call_block
    elif getattr(dit.run_block, "compile_mode", None) != options.compile_mode:
        dit.run_block = compile_block_fn(dit, options)
    if options.graphs and next(dit.parameters()).is_cuda:
        return GraphedDiT(dit)
    return dit


def _has_hooks(module: nn.Module) -> bool:
    """Hooks (e.g. layer offloading) act on the diffusers submodules, which conversion replaces."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def enable_compile_caches(cache_dir: Path) -> None:
    """Point inductor's persistent caches (FX graphs, autotuning, Triton kernels) at `cache_dir`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    torch._inductor.config.fx_graph_cache = True
    torch._inductor.config.autotune_local_cache = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)


def compile_block_fn(dit: ZImageDiT, options: SpeedOptions):
    """`torch.compile` of the one block function all blocks share (one graph per block kind and shape).

    Blocks are passed as arguments, so the 34 blocks reuse the graphs compiled for the first of their
    kind. fullgraph is asked for unless quantized layers (whose forward we do not own) are present.
    """
    enable_compile_caches(options.cache_dir or default_cache_dir())
    quantized = any(isinstance(m, SplitLinear) for m in dit.modules())
    compiled = torch.compile(call_block, mode=options.compile_mode, dynamic=False, fullgraph=not quantized)
    compiled.compile_mode = options.compile_mode  # lets `accelerate` keep it when only graphs change
    return compiled


@dataclass
class _Captured:
    """One captured forward and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    x: Tensor
    t: Tensor
    captions: list[Tensor]
    out: Tensor

    def replay(self, x: Tensor, t: Tensor, captions: list[Tensor]) -> Tensor:
        self.x.copy_(x)
        self.t.copy_(t)
        for static, caption in zip(self.captions, captions, strict=True):
            static.copy_(caption)
        self.graph.replay()
        return self.out.clone()


class GraphedDiT(nn.Module):
    """Runs `ZImageDiT` through a CUDA graph captured per (shapes, dtypes) bucket.

    All buckets share one memory pool (replays never overlap and each output is copied out at once).
    A bucket whose capture fails runs uncaptured, with a warning, rather than failing the image.
    """

    batched_api = True

    def __init__(self, dit: ZImageDiT) -> None:
        super().__init__()
        self.dit = dit
        self._graphs: dict[tuple, _Captured | None] = {}
        self._pool = None

    def captured_buckets(self) -> tuple[int, int]:
        """(buckets replaying a graph, buckets whose capture failed and run uncaptured)."""
        failed = sum(1 for g in self._graphs.values() if g is None)
        return len(self._graphs) - failed, failed

    def forward(self, x: Tensor, t: Tensor, captions: list[Tensor]) -> Tensor:
        key = (tuple(x.shape), x.dtype, t.dtype, tuple(tuple(c.shape) for c in captions), x.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, t, captions)
        captured = self._graphs[key]
        if captured is None:
            return self.dit(x, t, captions)
        return captured.replay(x, t, captions)

    def _capture(self, x: Tensor, t: Tensor, captions: list[Tensor]) -> _Captured | None:
        static = (x.clone(), t.clone(), [c.clone() for c in captions])
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up: compiles, cuDNN plans, RoPE tables — all before capture
            for _ in range(2):
                self.dit(*static)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.dit(*static)
        except RuntimeError as exc:
            log.warning("CUDA graph capture failed for %s; running uncaptured: %s", tuple(x.shape), exc)
            return None
        self._pool = self._pool or graph.pool()
        return _Captured(graph, *static, out)
