"""Start G local processes for context parallel (`zturbo generate --gpus G`, `serve --cp G`).

`launch(fn, G, *args)` runs `fn(rank, world, *args)` in G processes through
`torch.multiprocessing.spawn` with a `torch.distributed` group already initialised: NCCL with one
GPU per rank when CUDA has G devices, else gloo on the CPU. The environment keeps NVLink multicast
off (NVLS and symmetric-memory multicast, which the lent multi-GPU machines do not support), set
before any process initialises NCCL. Rank 0 does everything that is not the DiT (text encoder, VAE,
sampling, output) and drives the others through `zturbo.models.context_parallel.ParallelDiT`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backend_for(world: int) -> str:
    """NCCL when there is one CUDA device per rank, else gloo (CPU)."""
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"


def device_for(rank: int, backend: str) -> torch.device:
    return torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")


def launch(fn: Callable[..., Any], world: int, *args: Any, backend: str | None = None) -> None:
    """Run `fn(rank, world, device, *args)` on `world` local processes; raises if any of them fails."""
    if world < 1:
        raise ValueError(f"--gpus must be ≥ 1 (got {world})")
    chosen = backend or backend_for(world)
    os.environ.update(NCCL_ENV)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    mp.spawn(_run, args=(world, chosen, fn, args), nprocs=world, join=True)


def _run(rank: int, world: int, backend: str, fn: Callable[..., Any], args: tuple) -> None:
    device = device_for(rank, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # the ranks share the CPU's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device_id = device if device.type == "cuda" else None
    dist.init_process_group(backend, rank=rank, world_size=world, device_id=device_id)
    try:
        fn(rank, world, device, *args)
    finally:
        dist.destroy_process_group()


__all__ = ["NCCL_ENV", "backend_for", "device_for", "launch"]
