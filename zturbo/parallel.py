"""Context parallel for `zturbo generate --gpus G` and `zturbo serve --cp G`: this process is rank 0,
G−1 spawned followers run the DiT with it.

Rank 0 does everything but the split DiT forward (text encoder, VAE, sampling, saving); its engine
wraps each DiT it realises in `ParallelDiT`, named by the file and weight dtype it came from. Before
the first forward of a DiT (and whenever the job's DiT changes) rank 0 broadcasts a LOAD with that
name, and each follower loads the same file through its own `Engine` (device cuda:rank, or the CPU
with gloo), which caches it as rank 0's does: switching back to a DiT loads nothing again. The
process group (NCCL or gloo, NVLink multicast off) is set up as `zturbo.runtime.context_launch` does.

A forward that fails on rank 0 after its inputs went out may leave the followers inside a collective
rank 0 never joins: the group is then restarted (followers killed, respawned, the next job's DiT sent
again), so the next job runs. MODELs the split forward does not run (DiT LoRAs, ControlNets) are
refused per sampling with one line; the step cache, --speed reference and fp16-safe at the start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zturbo.checkpoints.load import LoadedComponent
from zturbo.engine import Engine, ZImageModel, _zturbo_dit
from zturbo.errors import InputError
from zturbo.models.configs import DiTConfig
from zturbo.models.context_parallel import ContextParallel, ParallelDiT, follow, stop_followers
from zturbo.models.zimage_dit import ZImageDiT
from zturbo.runtime import context_launch
from zturbo.runtime.settings import EngineSettings

log = logging.getLogger(__name__)
MAX_HEADS = DiTConfig().n_heads  # Z-Image's attention heads: the most processes a DiT splits over


@dataclass(frozen=True)
class Launch:
    """How the followers start (again, after a failure): group size, backend, their engine settings."""

    world: int
    backend: str
    fields: dict
    flag: str  # the option that asked for it, for messages: --gpus or --cp

    @property
    def device(self) -> torch.device:
        """Where rank 0's collectives run."""
        return context_launch.device_for(0, self.backend)


@dataclass
class ContextGroup:
    """Rank 0's handle on the group: the followers' processes and the context the engine splits over."""

    context: ContextParallel
    processes: mp.ProcessContext
    launch: Launch
    restarts: int = 0

    def close(self) -> None:
        """Stop the followers, leave the group and wait for them to exit (killed if they do not)."""
        try:
            stop_followers(self.context, self.launch.device)
        except Exception as exc:  # a follower already died: nothing to tell it
            log.warning("context parallel: could not stop the followers cleanly (%s)", exc)
        dist.destroy_process_group()
        _end(self.processes, timeout=30)
        log.info("context parallel: the %d follower(s) stopped", self.launch.world - 1)

    def abort(self) -> None:
        """Kill the followers without a word to them (a forward may still be running on rank 0)."""
        _end(self.processes, timeout=0)
        log.info("context parallel: the %d follower(s) were ended", self.launch.world - 1)

    def restart(self) -> None:
        """After a forward failed on rank 0: kill the followers, start new ones, rejoin the group."""
        log.warning(
            "context parallel: a forward failed; restarting the %d follower(s)", self.launch.world - 1
        )
        _end(self.processes, timeout=0)
        dist.destroy_process_group()
        self.processes = _join(self.launch)
        self.context.selected = None  # the new followers hold no DiT yet
        self.restarts += 1


def start(world: int, settings: EngineSettings, *, cpu: bool = False, flag: str = "--gpus") -> ContextGroup:
    """Spawn ranks 1..world−1 (each follows, loading what rank 0 names), join the group as rank 0.

    The followers are daemons: if this process fails they end with it instead of waiting forever."""
    check_settings(world, settings, flag=flag)
    backend = "gloo" if cpu else context_launch.backend_for(world)
    if backend == "gloo" and not cpu and torch.cuda.is_available():
        found = torch.cuda.device_count()
        raise InputError(f"{flag} {world} needs {world} CUDA devices (found {found}); or add --device cpu")
    launch = Launch(world, backend, _init_fields(settings), flag)
    processes = _join(launch)
    group = ContextGroup(ContextParallel(), processes, launch)  # the context: once the group exists
    group.context.on_failure = group.restart
    return group


def check_settings(
    world: int, settings: EngineSettings, *, control: bool = False, loras: bool = False, flag: str = "--gpus"
) -> None:
    """Refuse, before anything loads, what the split forward does not run."""
    if world > MAX_HEADS:
        raise InputError(
            f"{flag} {world}: a Z-Image DiT splits over at most {MAX_HEADS} processes (its heads)"
        )
    if control:
        raise InputError(f"{flag} {world}: context parallel does not run ControlNets yet (drop --control)")
    if loras:  # the other processes load the base DiT file: their weights would not carry the LoRA
        raise InputError(f"{flag} {world}: context parallel does not apply LoRAs yet (drop --lora)")
    if settings.step_cache > 0:
        raise InputError(f"{flag} {world}: context parallel runs without the step cache (drop --step-cache)")
    if settings.speed == "reference":
        raise InputError(f"{flag} {world} needs zturbo's DiT: use --speed eager (not reference)")
    if settings.placement.fp16_dit:
        raise InputError(
            f"{flag} {world}: the fp16-safe path (GPUs without bf16) is not split yet; use --dtype fp32"
        )


def check_model(model: ZImageModel, launch: Launch) -> None:
    """Per sampling: refuse a MODEL whose DiT differs from the file the followers load."""
    where = f"{launch.flag} {launch.world}: context parallel"
    if model.patches:  # the followers hold the file's weights: a LoRA on rank 0 alone would be wrong
        raise InputError(
            f"{where} does not apply LoRAs to the diffusion model yet (LoraLoader / LoraLoaderModelOnly "
            "on the MODEL); drop the LoRA or use a server without context parallel"
        )
    if model.controls:
        raise InputError(f"{where} does not run ControlNets yet; drop the ControlNet patch from the MODEL")


def attach(engine: Engine, group: ContextGroup) -> None:
    """Make `engine` run its DiTs split over `group` (every DiT it realises from now on)."""
    engine.dit_wrapper = lambda module, component: wrap(module, component, group)
    engine.dit_check = lambda model: check_model(model, group.launch)


def wrap(module: torch.nn.Module, component: LoadedComponent, group: ContextGroup) -> ParallelDiT:
    """The engine's hook: zturbo's DiT inside `module` as rank 0's ParallelDiT, named by its file."""
    dit = _zturbo_dit(module)
    if dit is None:
        raise InputError(f"{group.launch.flag} needs zturbo's DiT (not --speed reference)")
    weight_dtype = str(component.runtime.get("weight_dtype", "default"))
    name = json.dumps({"path": str(component.source), "weight_dtype": weight_dtype})
    return ParallelDiT(dit, group.context, name)


def _init_fields(settings: EngineSettings) -> dict:
    """What a follower rebuilds its settings from (the derived fields hold enums that do not pickle)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.init}


def _join(launch: Launch) -> mp.ProcessContext:
    """Spawn the followers on a fresh port and join them in the default group as rank 0."""
    os.environ.update(context_launch.NCCL_ENV)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(context_launch.free_port()))
    level = logging.getLogger().getEffectiveLevel()
    processes = mp.start_processes(
        _follower, args=(launch.world, launch.backend, launch.fields, level), nprocs=launch.world - 1,
        join=False, daemon=True, start_method="spawn",
    )  # fmt: skip
    device = launch.device
    dist.init_process_group(
        launch.backend, rank=0, world_size=launch.world, device_id=device if device.type == "cuda" else None
    )
    return processes


def _end(processes: mp.ProcessContext, timeout: float) -> None:
    """Wait up to `timeout` seconds for our followers to exit, then kill those still running."""
    for process in processes.processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
        if process.exitcode not in (0, None):
            log.warning("context parallel: follower pid %s exited with %s", process.pid, process.exitcode)


def _follower(index: int, world: int, backend: str, fields: dict, level: int) -> None:
    rank = index + 1
    logging.basicConfig(level=level, format=f"%(levelname)s rank {rank} %(name)s: %(message)s")
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
        follow(None, ContextParallel(), load=lambda name: _load(engine, name), device=device)
    finally:
        dist.destroy_process_group()


def _load(engine: Engine, name: str) -> ZImageDiT:
    """A follower's LOAD: the DiT rank 0 named, through this follower's engine (cached by file)."""
    choice = json.loads(name)
    path = Path(choice["path"])
    dit = _zturbo_dit(engine.load_dit(path, choice["weight_dtype"]).transformer)
    if dit is None:
        raise ValueError("context parallel needs zturbo's DiT (not --speed reference)")
    log.info("running %s (%s)", path.name, choice["weight_dtype"])
    return dit


__all__ = ["ContextGroup", "Launch", "attach", "check_model", "check_settings", "start", "wrap"]
