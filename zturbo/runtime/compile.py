"""Speed modes for the diffusion transformer: which implementation runs, compiled or not, graphed or not.

- `reference`: diffusers' class as loaded (the parity baseline).
- `eager` (default): zturbo's DiT (`zturbo.models.zimage_dit`): fused Q‖K‖V and W1‖W3 GEMMs, cuDNN
  attention first, no mask when nothing is batch-padded, real-valued RoPE. Same math as the reference
  (fp32 parity ≤ 1e-5), no warm-up.
- `compile`: eager plus `torch.compile` of the block function, shapes static and bucketed by
  (resolution, batch, caption lengths): the RMSNorm/modulation/RoPE/gate/SiLU·up work between the GEMMs
  fuses into a few kernels. The first step at a new size compiles (tens of seconds cold; a few with
  the persistent cache warm).
- `max`: compile plus a CUDA graph of the whole transformer forward per bucket (no launch gaps).

`step_cache` (0 = off) adds lossy first-block caching across sampling steps to eager/compile/max
(`zturbo.models.zimage_dit.StepCache`): its skip decision is Python between the (compiled) blocks, which
a graph of the whole forward cannot replay, so with it on `max` runs without CUDA graphs (logged).

Options travel as a `SpeedOptions` object; the only process-wide state touched is torch's own
compiler config (cache folder, recompile limit), set when compiling is first enabled.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend
from torch.utils._triton import has_triton

from zturbo.errors import InputError
from zturbo.models.zimage_convert import SplitLinear, from_diffusers
from zturbo.models.zimage_dit import DEFAULT_SDPA_BACKENDS, ZImageDiT, call_block
from zturbo.quant.linear import QuantLinear
from zturbo.runtime.graphs import GraphCache
from zturbo.runtime.memory import Residence

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
    """How the DiT runs. `cuda_graphs=None` means: on in `max` mode, on CUDA (never with `step_cache`).

    `step_cache`: the first-block cache's threshold on the relative change of main layer 0's residual
    (0 = off, the default; ~0.1 skips most late steps). Lossy and opt-in; not in `reference` mode.
    """

    mode: str = "eager"
    compile_mode: str = "default"  # "max-autotune-no-cudagraphs" also autotunes GEMMs (minutes cold)
    cache_dir: Path | None = None  # None → default_cache_dir()
    cuda_graphs: bool | None = None
    sdpa_backends: tuple[SDPBackend, ...] = field(default=DEFAULT_SDPA_BACKENDS)
    step_cache: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in SPEED_MODES:
            raise InputError(f"speed must be one of {', '.join(SPEED_MODES)} (got {self.mode!r})")
        if self.compile_mode not in COMPILE_MODES:
            raise InputError(
                f"compile mode must be one of {', '.join(COMPILE_MODES)} (got {self.compile_mode!r})"
            )
        if not (isinstance(self.step_cache, (int, float)) and math.isfinite(self.step_cache)) or (
            self.step_cache < 0
        ):
            raise InputError(
                f"step cache must be a finite number >= 0 (0 = off; e.g. 0.12), got {self.step_cache!r}"
            )
        if self.step_cache > 0 and self.mode == "reference":
            raise InputError(
                "the step cache needs zturbo's DiT: use speed eager, compile or max, not reference"
            )

    @property
    def compiles(self) -> bool:
        return self.mode in ("compile", "max")

    @property
    def graphs_requested(self) -> bool:
        return self.mode == "max" if self.cuda_graphs is None else self.cuda_graphs

    @property
    def graphs(self) -> bool:
        """Whole-forward CUDA graphs: as requested, unless the step cache is on (it wins)."""
        return self.graphs_requested and self.step_cache == 0

    def within(self, residence: Residence) -> SpeedOptions:
        """These options as a component placed at `residence` can run them: weights that stream change
        addresses every step, and compiled blocks and CUDA graphs need fixed ones, so a streamed
        component runs eagerly (the step cache, decided per step in Python, stays)."""
        if residence.fixed_addresses or not (self.compiles or self.graphs_requested):
            return self
        return replace(self, mode="eager" if self.compiles else self.mode, cuda_graphs=False)


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
    device = next(dit.parameters()).device
    on_cuda = device.type == "cuda"
    if options.compiles and not compiler_available(device):
        options = replace(options, mode="eager")
    if not options.compiles:
        dit.run_block = call_block
    elif getattr(dit.run_block, "compile_mode", None) != options.compile_mode:
        dit.run_block = compile_block_fn(dit, options)
    if options.graphs_requested and not options.graphs and on_cuda:
        log.warning(
            "step cache on: the DiT runs without CUDA graphs (a per-step skip cannot be replayed from a "
            "graph of the whole forward); compiled blocks stay"
        )
    if options.graphs and on_cuda:
        return GraphedDiT(dit)
    return dit


def compiler_available(device: torch.device) -> bool:
    """Whether `torch.compile` can generate code for `device`; warns once per process when not.

    On CUDA inductor needs Triton, which Windows installs of PyTorch lack unless `triton-windows` is
    added: the compile modes then run eagerly (same results) instead of failing every job.
    """
    if device.type != "cuda" or has_triton():
        return True
    global _WARNED_NO_TRITON
    if not _WARNED_NO_TRITON:
        _WARNED_NO_TRITON = True
        log.warning(
            "torch.compile needs Triton for CUDA and it is not installed (on Windows: pip install "
            "triton-windows); the compile modes run eagerly"
        )
    return False


_WARNED_NO_TRITON = False


def accelerate_vae(vae: nn.Module, options: SpeedOptions) -> None:
    """In the compile modes, compile the VAE decoder in place (state-dict keys unchanged).

    The decoder is ~10 TFLOP of convolutions at 1024² plus GroupNorm/SiLU passes over up to 128×1024²
    activations; compiled, those passes fuse (H100: 92 → 40 ms). Each new image size compiles once
    (tens of seconds cold, seconds with the persistent cache); tiled decodes compile per tile shape.
    """
    device = next(vae.parameters()).device
    if not options.compiles or device.type != "cuda" or not compiler_available(device):
        return
    enable_compile_caches(options.cache_dir or default_cache_dir())
    cast(nn.Module, vae.decoder).compile(mode=options.compile_mode, dynamic=False)


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
    quantized = any(isinstance(m, (SplitLinear, QuantLinear)) for m in dit.modules())
    compiled = torch.compile(call_block, mode=options.compile_mode, dynamic=False, fullgraph=not quantized)
    # lets `accelerate` keep it when only graphs change (an attribute on the compiled function)
    cast(Any, compiled).compile_mode = options.compile_mode
    return compiled


class GraphedDiT(nn.Module):
    """Runs `ZImageDiT` through CUDA graphs captured per (shapes, dtypes) bucket (`runtime.graphs`)."""

    batched_api = True
    streamable = False  # captured graphs replay fixed weight addresses

    def __init__(self, dit: ZImageDiT) -> None:
        super().__init__()
        self.dit = dit
        self._graphs = GraphCache(dit, "diffusion model")

    @property
    def input_dtype(self) -> torch.dtype | None:
        return self.dit.input_dtype

    def captured_buckets(self) -> tuple[int, int]:
        """(buckets replaying a graph, buckets whose capture failed and run uncaptured)."""
        return self._graphs.buckets()

    def forward(self, x: Tensor, t: Tensor, captions: list[Tensor]) -> Tensor:
        return self._graphs(x, t, captions)
