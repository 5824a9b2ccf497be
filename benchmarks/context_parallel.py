"""Context parallel latency: the DiT's 8 forwards of one image on 1 vs G GPUs (Ulysses, NCCL).

    python benchmarks/context_parallel.py --gpus 4 [--sizes 1024 2048] [--steps 8]

Full-size random bf16 weights drawn on each GPU (no files), batch 1, a 128-token caption, eager
zturbo DiT (cuDNN attention). One launch of G processes (zturbo.runtime.context_launch, NVLink
multicast off): rank 0 first times the plain single-GPU forward while the others wait, then all G
time the split forward. Reports seconds per image (steps forwards, after one warm-up forward) and the
speed-up, and the split output's relative difference from the single-GPU one (bf16: ~1e-2 is the
GEMMs' row-count rounding, not an error). Without CUDA it runs the tiny model on CPU processes (gloo),
which tests the script, not the speed. Writes benchmarks/results/<date>-<device>-context_parallel.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from zturbo.models.configs import DiTConfig
from zturbo.models.context_parallel import ContextParallel, ParallelDiT, follow
from zturbo.models.zimage_convert import from_diffusers
from zturbo.runtime.context_launch import launch
from zturbo.testing.synthetic import TINY_DIT, build_random_dit

CAPTION = 128


def build(device: torch.device):
    """Full-size bf16 on CUDA, the tiny fp32 model on the CPU (same seed on every rank)."""
    config, dtype = (DiTConfig(), torch.bfloat16) if device.type == "cuda" else (TINY_DIT, torch.float32)
    model, state_dict = build_random_dit(config, seed=0, dtype=dtype, device=device.type)
    model.load_state_dict(state_dict, assign=True)
    return from_diffusers(model.eval()).to(device), config, dtype


def inputs(size: int, config: DiTConfig, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator().manual_seed(size)
    latent = size // 8
    x = torch.randn(1, config.in_channels, latent, latent, generator=gen).to(device, dtype)
    t = torch.rand(1, generator=gen).to(device, dtype)
    return x, t, [torch.randn(CAPTION, config.cap_feat_dim, generator=gen).to(device, dtype)]


def timed(model, args, steps: int, device: torch.device) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        out = model(*args)  # warm-up (plans, kernels, NCCL buffers)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            out = model(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - started, out.float()


def worker(rank: int, world: int, device: torch.device, sizes: list[int], steps: int, result: str) -> None:
    dit, config, dtype = build(device)
    context = ContextParallel()
    rows = []
    for size in sizes:
        args = inputs(size, config, dtype, device)
        single = timed(dit, args, steps, device) if rank == 0 else None
        dist.barrier()
        if rank != 0:
            follow(dit, context)
            continue
        parallel = ParallelDiT(dit, context)
        seconds, out = timed(parallel, args, steps, device)
        parallel.stop()
        dit.set_context_parallel(None)
        assert single is not None
        rel = float((out - single[1]).norm() / single[1].norm())
        rows.append({"size": size, "steps": steps, "gpus": world, "single_s": single[0], "split_s": seconds,
                     "speedup": single[0] / seconds, "rel_diff": rel})  # fmt: skip
    if rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        Path(result).write_text(json.dumps({"device": name, "rows": rows}, indent=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=max(2, torch.cuda.device_count()))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    tag = torch.cuda.get_device_name(0).replace(" ", "_") if cuda else "cpu"
    path = args.out / f"{dt.date.today().isoformat()}-{tag}-context_parallel.json"
    launch(worker, args.gpus, args.sizes, args.steps, str(path), backend=None if cuda else "gloo")
    report = json.loads(path.read_text(encoding="utf-8"))
    for row in report["rows"]:
        print(f"{row['size']}²  1 GPU {row['single_s']:.3f}s  {row['gpus']} GPUs {row['split_s']:.3f}s  "
              f"×{row['speedup']:.2f}  rel {row['rel_diff']:.1e}")  # fmt: skip
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
