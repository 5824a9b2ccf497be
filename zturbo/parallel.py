"""`zturbo generate --gpus G`: this process is rank 0, G−1 spawned followers run the DiT with it.

Rank 0 does everything but the split DiT forward (text encoder, VAE, sampling, saving); its engine
wraps the loaded DiT in `ParallelDiT`, which broadcasts each call's inputs. Each follower loads the
same DiT file through its own `Engine` (device cuda:rank, or the CPU with gloo) and runs `follow`
until rank 0 stops it. The process group (NCCL or gloo, NVLink multicast off) is set up by
`zturbo.runtime.context_launch`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zturbo.engine import Engine, _zturbo_dit
from zturbo.errors import InputError
from zturbo.models.context_parallel import ContextParallel, ParallelDiT, follow
from zturbo.runtime import context_launch
from zturbo.runtime.settings import EngineSettings


@dataclass
class ContextGroup:
    """Rank 0's handle on the group: the followers' processes and the context the engine splits over."""

    context: ContextParallel
    processes: mp.ProcessContext
    dit: ParallelDiT | None = None

    def close(self) -> None:
        """Stop the followers, leave the group and wait for them to exit."""
        if self.dit is not None:
            self.dit.stop()
        else:  # the DiT never loaded: release followers that wait for a first call
            _release()
        dist.destroy_process_group()
        self.processes.join()


def start(
    world: int, settings: EngineSettings, dit_path: Path, weight_dtype: str, *, cpu: bool = False
) -> ContextGroup:
    """Spawn ranks 1..world−1 (each loads `dit_path` and follows), join the group as rank 0.

    The followers are daemons: if this process fails they end with it instead of waiting forever."""
    check_settings(world, settings)
    backend = "gloo" if cpu else context_launch.backend_for(world)
    if backend == "gloo" and not cpu and torch.cuda.is_available():
        found = torch.cuda.device_count()
        raise ValueError(f"--gpus {world} needs {world} CUDA devices (found {found}); or add --device cpu")
    os.environ.update(context_launch.NCCL_ENV)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(context_launch.free_port()))
    processes = mp.start_processes(
        _follower, args=(world, backend, _init_fields(settings), dit_path, weight_dtype), nprocs=world - 1, join=False,
        daemon=True, start_method="spawn",
    )  # fmt: skip
    device = context_launch.device_for(0, backend)
    dist.init_process_group(
        backend, rank=0, world_size=world, device_id=device if device.type == "cuda" else None
    )
    return ContextGroup(ContextParallel(), processes)


def check_settings(world: int, settings: EngineSettings, *, control: bool = False, loras: bool = False) -> None:
    """Refuse, before anything loads, what the split forward does not run."""
    if control:
        raise InputError(f"--gpus {world}: context parallel does not run ControlNets yet (drop --control)")
    if loras:  # the other processes load the base DiT file: their weights would not carry the LoRA
        raise InputError(f"--gpus {world}: context parallel does not apply LoRAs yet (drop --lora)")
    if settings.step_cache > 0:
        raise InputError(f"--gpus {world}: context parallel runs without the step cache (drop --step-cache)")
    if settings.speed == "reference":
        raise InputError(f"--gpus {world} needs zturbo's DiT: use --speed eager (not reference)")
    if settings.placement.fp16_dit:
        raise InputError(
            f"--gpus {world}: the fp16-safe path (GPUs without bf16) is not split yet; use --dtype fp32"
        )


def attach(engine: Engine, group: ContextGroup) -> None:
    """Make `engine` run its DiT split over `group` (every DiT it realises from now on)."""
    engine.dit_wrapper = lambda module: wrap(module, group)


def wrap(module: torch.nn.Module, group: ContextGroup) -> ParallelDiT:
    """The engine's hook: zturbo's DiT inside `module` as rank 0's ParallelDiT."""
    dit = _zturbo_dit(module)
    if dit is None:
        raise ValueError("--gpus needs zturbo's DiT (not --speed reference)")
    group.dit = ParallelDiT(dit, group.context)
    return group.dit


def _init_fields(settings: EngineSettings) -> dict:
    """What a follower rebuilds its settings from (the derived fields hold enums that do not pickle)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.init}


def _follower(index: int, world: int, backend: str, fields: dict, path: Path, weight_dtype: str) -> None:
    rank = index + 1
    device = context_launch.device_for(rank, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # the ranks share the CPU's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        backend, rank=rank, world_size=world, device_id=device if device.type == "cuda" else None
    )
    try:
        engine = Engine(EngineSettings(**{**fields, "device": str(device)}))
        dit = _zturbo_dit(engine.load_dit(path, weight_dtype).transformer)
        if dit is None:
            raise ValueError("--gpus needs zturbo's DiT (not --speed reference)")
        follow(dit, ContextParallel())
    finally:
        dist.destroy_process_group()


def _release() -> None:
    from zturbo.models.context_parallel import HEADER

    device = torch.device("cuda", 0) if dist.get_backend() == "nccl" else torch.device("cpu")
    dist.broadcast(torch.zeros(HEADER, dtype=torch.long, device=device), src=0)


__all__ = ["ContextGroup", "attach", "start", "wrap"]
