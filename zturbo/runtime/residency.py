"""Put a loaded component's weights where a `MemoryPlan` says, in place, and back again.

Placement mutates the module (tensors moved, streaming hooks attached) instead of building a new one,
so everything that holds the component (the engine's cache, a workflow's MODEL output) keeps working
when the engine switches plans after an out-of-memory error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER
from zturbo.runtime.memory import VAE_TILE, Residence
from zturbo.runtime.offload import BlockStreamer, on_device

log = logging.getLogger(__name__)
_STREAMER = "_zturbo_streamer"


def dit_blocks(module: nn.Module) -> list[nn.Module]:
    """The DiT's transformer blocks in execution order (diffusers' class and zturbo's DiT alike, or
    the DiT inside a `GraphedDiT`)."""
    module = getattr(module, "dit", module)
    return [*module.noise_refiner, *module.context_refiner, *module.layers]  # type: ignore[misc]


def _non_block_modules(module: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    inside = {id(m) for block in blocks for m in block.modules()}
    return [m for m in module.modules() if id(m) not in inside]


def _move_direct(modules: list[nn.Module], device: torch.device) -> None:
    for m in modules:
        for param in m._parameters.values():
            if param is not None and param.device != device:
                param.data = param.data.to(device)
        for name, buf in m._buffers.items():
            if buf is not None and buf.device != device:
                m._buffers[name] = buf.to(device)


def _detach(module: nn.Module) -> None:
    streamer = module.__dict__.pop(_STREAMER, None)
    if streamer is not None:
        streamer.detach()


def forget_host_copies(blocks: list[nn.Module]) -> None:
    """Drop packed host copies kept for re-streaming (the blocks are resident now)."""
    for block in blocks:
        block.__dict__.pop("_zturbo_host_block", None)


def streamer_of(module: nn.Module) -> BlockStreamer | None:
    return module.__dict__.get(_STREAMER)


def weights_changed(module: nn.Module) -> None:
    """The host copies of a streamed component's blocks were written (patched): blocks already in
    the device slots are stale, so the next use copies them again."""
    streamer = streamer_of(getattr(module, "dit", module))
    if streamer is not None:
        streamer.release()


def block_bytes(block: nn.Module) -> int:
    tensors = [*block.parameters(), *block.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def choose_resident(sizes: list[int], count: int) -> set[int]:
    """`count` blocks to keep on the GPU: the biggest first (each saves its bytes of copying per step),
    and among equal ones evenly spaced, so every streamed block's copy overlaps more compute."""
    chosen: set[int] = set()
    for size in sorted(set(sizes), reverse=True):
        group = [i for i, s in enumerate(sizes) if s == size]
        take = min(len(group), count - len(chosen))
        chosen.update(group[int((j + 0.5) * len(group) / take)] for j in range(take))
        if len(chosen) >= count:
            break
    return chosen


def place_dit(module: nn.Module, residence: Residence, device: torch.device) -> None:
    """Resident: everything on `device`. Streamed: blocks in (pinned) RAM, the rest on `device`.

    The module must already run in a form that tolerates moving weights when streamed (eager blocks:
    the engine converts it with `SpeedOptions.within(residence)` first); `GraphedDiT`, whose captured
    graphs hold fixed weight addresses, is refused.
    """
    _detach(module)
    if not residence.streamed:
        module.to(device)
        forget_host_copies(dit_blocks(module))
        return
    if not getattr(module, "streamable", True):
        raise TypeError(f"{type(module).__name__} keeps weights at fixed addresses and cannot stream")
    blocks = dit_blocks(module)
    _move_direct(_non_block_modules(module, blocks), device)
    count = min(residence.resident_blocks, len(blocks))
    keep = choose_resident([block_bytes(b) for b in blocks], count)
    streamer = BlockStreamer(blocks, device, pin=residence.pinned, resident=keep)
    module.__dict__[_STREAMER] = streamer
    log.info(
        "DiT: %d blocks streamed (%.2f GiB), %d resident",
        len(streamer.order),
        streamer.streamed_bytes / 2**30,
        len(keep),
    )


def place_text_encoder(module: nn.Module, residence: Residence, device: torch.device) -> None:
    """Resident: on `device`. Streamed: all of it in RAM; `text_encoder_ready` brings it in per prompt."""
    _detach(module)
    if not residence.streamed:
        module.to(device)
        forget_host_copies(list(module.layers))  # type: ignore[arg-type]
        return
    blocks = list(module.layers)  # type: ignore[arg-type]
    _move_direct(_non_block_modules(module, blocks), torch.device("cpu"))
    module.__dict__[_STREAMER] = BlockStreamer(blocks, device, pin=residence.pinned)


def place(kind: str, module: nn.Module, residence: Residence, device: torch.device) -> None:
    """Place a DiT or a text encoder (the VAE is always resident)."""
    if kind == DIT:
        place_dit(module, residence, device)
    elif kind == TEXT_ENCODER:
        place_text_encoder(module, residence, device)
    else:
        module.to(device)


@contextmanager
def text_encoder_ready(module: nn.Module, device: torch.device) -> Iterator[None]:
    """For one encode: a streamed encoder's embedding and norms on `device`, its layers streamed, and
    afterwards nothing of it left in VRAM."""
    streamer = streamer_of(module)
    if streamer is None:
        yield
        return
    try:
        with on_device(_non_block_modules(module, list(module.layers)), device):  # type: ignore[arg-type]
            yield
    finally:
        streamer.release()


@contextmanager
def text_encoder_on_host(module: nn.Module) -> Iterator[torch.device]:
    """Run a text encoder where its weights are, giving that device: a resident one's device, or, for a
    streamed one, the CPU on its host copies, the streaming hooks paused (token-by-token decoding
    would otherwise copy every layer to the GPU once per token)."""
    streamer = streamer_of(module)
    if streamer is None:
        yield next(module.parameters()).device
        return
    streamer.release()
    streamer.bypass = True
    try:
        yield torch.device("cpu")
    finally:
        streamer.bypass = False


def text_encoder_device(module: nn.Module, device: torch.device) -> torch.device:
    """Where one forward of the text encoder computes: `device` for a streamed one (inside
    `text_encoder_ready`), else where its weights are."""
    return device if streamer_of(module) is not None else next(module.parameters()).device


@contextmanager
def vae_tiling(vae: nn.Module, enabled: bool, tile: int = VAE_TILE, overlap: int | None = None) -> Iterator[None]:
    """diffusers' tiled VAE decode/encode with `tile`-pixel tiles, for one call; `overlap` pixels
    between tiles (default: diffusers' quarter of a tile)."""
    if not enabled:
        yield
        return
    kl: Any = vae  # diffusers' AutoencoderKL: its tiling settings are plain attributes nn.Module cannot type
    saved = (kl.use_tiling, kl.tile_sample_min_size, kl.tile_latent_min_size, kl.tile_overlap_factor)
    factor = 2 ** (len(kl.config.block_out_channels) - 1)
    kl.use_tiling, kl.tile_sample_min_size, kl.tile_latent_min_size = True, tile, tile // factor
    if overlap is not None:
        kl.tile_overlap_factor = overlap / tile
    try:
        yield
    finally:
        kl.use_tiling, kl.tile_sample_min_size, kl.tile_latent_min_size, kl.tile_overlap_factor = saved
