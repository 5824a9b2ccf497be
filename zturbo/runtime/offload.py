"""Run transformer blocks whose weights live in host RAM, copying each to the GPU just before it runs.

`BlockStreamer` packs every streamed block's tensors (parameters and buffers, so a `QuantLinear`'s
quantized bytes stream as they are stored: 4 bits a weight for Q4_0) into one flat host buffer per
block, page-locked when asked. Two device slots, each the size of the largest block, take turns: while
block i computes from one slot, block i+1 is copied into the other on a side CUDA stream. Events order
the two streams (a slot is overwritten only after the block that used it finished; a block computes
only after its copy landed), so VRAM holds two blocks however many there are. Forward pre-/post-hooks
point the block's tensors at the slot and back at the host copy, which keeps the model's structure
(and `state_dict`) untouched.

On CPU and MPS the same code runs without streams: copies are plain synchronous `copy_`, which is how
the tests check that streamed and resident models compute identical outputs.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
ALIGN = 256  # bytes; every tensor's offset in a packed block, so dtype views are always aligned
_HOST = "_zturbo_host_block"  # a block's packed host copy, reused when a new plan streams it again


@dataclass(frozen=True)
class _Slot:
    """Where one tensor of a block sits in the packed buffer."""

    module: nn.Module
    name: str
    is_param: bool
    offset: int
    dtype: torch.dtype
    shape: torch.Size

    def view(self, flat: Tensor) -> Tensor:
        nbytes = self.shape.numel() * self.dtype.itemsize
        return flat[self.offset : self.offset + nbytes].view(self.dtype).view(self.shape)

    def bind(self, tensor: Tensor) -> None:
        if self.is_param:
            self.module._parameters[self.name].data = tensor  # type: ignore[union-attr]
        else:
            self.module._buffers[self.name] = tensor


def _tensors(block: nn.Module, recurse: bool = True) -> Iterator[tuple[nn.Module, str, bool, Tensor]]:
    for module in block.modules() if recurse else [block]:
        for name, param in module._parameters.items():
            if param is not None:
                yield module, name, True, param.data
        for name, buf in module._buffers.items():
            if buf is not None:
                yield module, name, False, buf


def _unregister(ptr: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(ptr)


def page_locked(nbytes: int) -> Tensor:
    """Exactly `nbytes` of page-locked host memory, for truly asynchronous host-to-GPU copies.

    torch's pinned allocator rounds every allocation up to a power of two (a 376 MB bf16 block would
    lock 512 MB, a third more RAM than planned); registering an ordinary allocation with CUDA, as
    torch's own checkpoint stager does, locks what is asked for. It is unregistered when freed.
    """
    flat = torch.empty(nbytes, dtype=torch.uint8)
    try:
        code = int(torch.cuda.cudart().cudaHostRegister(flat.data_ptr(), nbytes, 1))  # 1: portable
    except (AttributeError, RuntimeError) as exc:
        code = -1
        log.debug("cudaHostRegister unavailable: %s", exc)
    if code != 0:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    weakref.finalize(flat, _unregister, flat.data_ptr()).atexit = False  # the process frees it anyway
    return flat


@dataclass
class HostBlock:
    """A streamed block's host side: its tensors, all views of one packed buffer or (unpacked) left
    where they already are, such as a memory-mapped file."""

    slots: list[_Slot]
    tensors: list[Tensor]
    nbytes: int
    flat: Tensor | None = None

    def copy_into(self, target: Tensor, non_blocking: bool) -> None:
        if self.flat is not None:
            target[: self.nbytes].copy_(self.flat, non_blocking=non_blocking)
            return
        for slot, source in zip(self.slots, self.tensors, strict=True):
            slot.view(target).copy_(source, non_blocking=non_blocking)


def host_block(block: nn.Module, *, pack: bool, pin: bool) -> HostBlock:
    """Lay out a block's tensors; packed, copy them into one (pinned) buffer and point the block at it,
    so no other copy stays. Unpacked costs no RAM: copies read the tensors in place (page cache)."""
    entries = list(_tensors(block))
    cached = block.__dict__.get(_HOST)
    if cached is not None and [t.data_ptr() for *_, t in entries] == [t.data_ptr() for t in cached.tensors]:
        return cached  # still pointing at its packed copy from the previous plan: nothing to copy
    slots, offset = [], 0
    for module, name, is_param, tensor in entries:
        slots.append(_Slot(module, name, is_param, offset, tensor.dtype, tensor.shape))
        offset += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    nbytes = max(offset, ALIGN)
    if not pack:
        tensors = [t if t.device.type == "cpu" else t.cpu() for *_, t in entries]
        for slot, tensor in zip(slots, tensors, strict=True):
            slot.bind(tensor)
        return HostBlock(slots, tensors, nbytes)
    flat = page_locked(nbytes) if pin else torch.empty(nbytes, dtype=torch.uint8)
    views = [slot.view(flat) for slot in slots]
    for slot, view, (*_, tensor) in zip(slots, views, entries, strict=True):
        view.copy_(tensor)
        slot.bind(view)
    block.__dict__[_HOST] = HostBlock(slots, views, nbytes, flat)
    return block.__dict__[_HOST]


class BlockStreamer:
    """Streams `blocks` (in execution order) from host buffers through two device slots.

    Blocks listed in `resident` are moved to the device once and left alone. `detach()` removes the
    hooks and leaves every streamed block pointing at its host buffer.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        device: torch.device,
        *,
        pin: bool,
        resident: AbstractSet[int] = frozenset(),
        pack: bool | None = None,
    ) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.order = [i for i in range(len(blocks)) if i not in resident]
        for i in resident:
            blocks[i].to(device)
            blocks[i].__dict__.pop(_HOST, None)  # a resident block needs no host copy
        pin = pin and self.cuda
        self.host = {
            i: host_block(blocks[i], pack=pin if pack is None else pack, pin=pin) for i in self.order
        }
        self.slot_bytes = max((h.nbytes for h in self.host.values()), default=0)
        self.slots: list[Tensor] = []  # allocated at the first block, dropped by `release()`
        self.loaded: list[int | None] = [None, None]  # block index each slot holds (or is receiving)
        self.current = 1  # slot of the block computing now; the first copy goes to slot 0
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.copied = [torch.cuda.Event() for _ in range(2)] if self.cuda else []
        self.freed = [torch.cuda.Event() for _ in range(2)] if self.cuda else []
        # True while the blocks compute from their host copies on the CPU (the prompt enhancer's
        # decoding): the hooks then leave the tensors where they are.
        self.bypass = False
        self.hooks = []
        for position, i in enumerate(self.order):
            self.hooks.append(blocks[i].register_forward_pre_hook(self._before(position)))
            self.hooks.append(blocks[i].register_forward_hook(self._after(position)))

    @property
    def streamed_bytes(self) -> int:
        return sum(h.nbytes for h in self.host.values())

    def _copy(self, block: int, slot: int) -> None:
        """Start copying `block` into `slot` once the slot's previous block finished computing."""
        if not self.slots:
            self.slots = [
                torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(2)
            ]
            if self.copy_stream is not None:
                # The slots come from the compute stream's pool, possibly memory that kernels still
                # queued there (a freed activation or dequantized weight) read or write: the side
                # stream must not write into it before that work is done.
                self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        if self.copy_stream is None:
            self.host[block].copy_into(self.slots[slot], non_blocking=False)
        else:
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(self.freed[slot])
                self.host[block].copy_into(self.slots[slot], non_blocking=True)
                self.copied[slot].record(self.copy_stream)
        self.loaded[slot] = block

    def _before(self, position: int):
        def hook(module: nn.Module, args: object) -> None:
            if self.bypass:
                return
            block = self.order[position]
            slot = self.loaded.index(block) if block in self.loaded else 1 - self.current
            if self.loaded[slot] != block:
                self._copy(block, slot)
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(self.copied[slot])
            for entry in self.host[block].slots:
                entry.bind(entry.view(self.slots[slot]))
            self.current = slot
            upcoming = self.order[(position + 1) % len(self.order)]
            if self.loaded[1 - slot] != upcoming and upcoming != block:
                self._copy(upcoming, 1 - slot)

        return hook

    def _after(self, position: int):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if self.bypass:
                return
            block = self.order[position]
            if self.cuda:
                self.freed[self.current].record(torch.cuda.current_stream(self.device))
            host = self.host[block]
            for entry, tensor in zip(host.slots, host.tensors, strict=True):
                entry.bind(tensor)

        return hook

    def release(self) -> None:
        """Free the two device slots (a text encoder's, between prompts); the next block reallocates."""
        if self.cuda and self.slots:
            torch.cuda.current_stream(self.device).synchronize()
            assert self.copy_stream is not None
            self.copy_stream.synchronize()
        self.slots = []
        self.loaded = [None, None]

    def detach(self) -> None:
        """Remove the hooks; streamed blocks keep pointing at their host buffers."""
        self.release()
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()


@contextmanager
def on_device(modules: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """Run with the direct tensors of `modules` on `device`, then point them back at their own host
    tensors (nothing copied back, nothing kept on the device): the text encoder's embedding during
    one encode, for example."""
    saved = [entry for module in modules for entry in _tensors(module, recurse=False)]
    try:
        for module, name, is_param, tensor in saved:
            moved = tensor.to(device, non_blocking=tensor.is_pinned())
            if is_param:
                module._parameters[name].data = moved  # type: ignore[union-attr]
            else:
                module._buffers[name] = moved
        yield
    finally:
        for module, name, is_param, tensor in saved:
            if is_param:
                module._parameters[name].data = tensor  # type: ignore[union-attr]
            else:
                module._buffers[name] = tensor
