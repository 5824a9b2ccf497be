"""Context parallel (Ulysses) for the DiT's main layers: one image's sequence split over G processes.

Each rank holds a contiguous slice of the unified sequence (`torch.tensor_split` bounds: the first
S mod G ranks one token more) and the full weights. Per block everything is per token except the
attention: there one `all_to_all_single` trades the sequence split for a head split (rank r gets its
head group for the whole sequence), attention runs on whole sequences, and a second all-to-all trades
back (DeepSpeed-Ulysses, as cache-dit and xDiT do). Head groups are as even as possible (30 heads on
4 ranks: 8, 8, 7, 7), so any G ≤ heads works; the uneven splits travel as flat buffers with per-rank
split sizes, which `all_to_all_single` takes on NCCL and on gloo (torch 2.13's gloo has it).

The refiners (4 of 34 blocks, on one part of the sequence each) and the final layer run replicated on
every rank: the main layers' output is all-gathered (padded to equal slices: `all_gather` needs equal
sizes) before them. The plain precision only (bf16/fp32 weights): the fp16-safe path scales the
attention input by one amax over all tokens, which a rank cannot see (an all-reduce would fix it).

The protocol rank 0 drives the others with: a HEADER of int64s, broadcast, then what its command
needs. FORWARD: x, t and the captions follow, and every rank runs the split forward. LOAD: a UTF-8
name follows (its byte count in the header), which each follower's `load` turns into the DiT that the
next FORWARDs run (`zturbo serve --cp` picks the DiT per job; rank 0 sends LOAD only when the DiT
changes). STOP: the followers' `follow` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from zturbo.models.zimage_dit import ZImageDiT

# int64s: the command, then FORWARD: batch, channels, h, w, dtype, cap_dim, captions, their lengths;
# LOAD: the name's byte count
HEADER = 64
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STOP, FORWARD, LOAD = 0, 1, 2


def even_split(total: int, parts: int) -> list[int]:
    """Sizes of `torch.tensor_split(range(total), parts)`: the first total mod parts get one more."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


class ContextParallel:
    """The process group the DiT's sequence is split over (default: the whole world)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.seqs: list[int] = []  # slice lengths of the sequence now running (set by `begin`)
        # Rank 0: the name of the DiT the followers run now (None: none yet, LOAD before the next FORWARD)
        self.selected: str | None = None
        # Rank 0: called when a forward fails after its inputs went out (the followers may be stuck in a
        # collective rank 0 will not join; zturbo.parallel restarts them)
        self.on_failure: Callable[[], None] | None = None

    def check_heads(self, heads: int) -> None:
        if heads < self.world:
            raise ValueError(
                f"context parallel over {self.world} processes needs ≥ {self.world} heads (got {heads})"
            )

    def begin(self, total: int) -> None:
        """Before the main layers: the unified sequence's length (every rank's slice follows from it)."""
        self.seqs = even_split(total, self.world)

    def shard(self, x: Tensor, dim: int = 1) -> Tensor:
        """This rank's slice of the sequence dimension."""
        return torch.tensor_split(x, self.world, dim=dim)[self.rank]

    def gather(self, x: Tensor, total: int) -> Tensor:
        """All ranks' slices (dim 1) back into the whole sequence of length `total`."""
        sizes = even_split(total, self.world)
        padded = F.pad(x, (0, 0, 0, sizes[0] - x.shape[1])).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:, :n] for p, n in zip(parts, sizes, strict=True)], dim=1)

    def attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, backends: tuple[SDPBackend, ...]
    ) -> Tensor:
        """q, k, v (B, s_r, H, D) for this rank's tokens → attention output (B, s_r, H, D).

        `mask` is the key mask over the whole sequence (B, 1, 1, S) or None: keys are whole after the
        first all-to-all, so it applies unchanged.
        """
        batch, local, heads, dim = q.shape
        seqs = self.seqs
        groups = even_split(heads, self.world)
        qkv = self._to_heads(torch.stack((q, k, v)), seqs, groups)  # (h_r, 3, B, S, D)
        q, k, v = (a.transpose(0, 1) for a in qkv.unbind(1))  # (B, h_r, S, D)
        if q.is_cuda:
            with sdpa_kernel(list(backends), set_priority=True):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._to_sequence(out.transpose(0, 1), seqs, groups, local)

    def _to_heads(self, x: Tensor, seqs: list[int], groups: list[int]) -> Tensor:
        """(3, B, s_r, H, D) sequence-split → (h_r, 3, B, S, D) head-split."""
        three, batch, local, _, dim = x.shape
        send = x.permute(3, 0, 1, 2, 4).contiguous()  # heads first: each rank's group is one block
        row = three * batch * dim
        mine = groups[self.rank]
        recv = send.new_empty(mine * row * sum(seqs))
        dist.all_to_all_single(
            recv,
            send.view(-1),
            output_split_sizes=[mine * row * s for s in seqs],
            input_split_sizes=[g * row * local for g in groups],
            group=self.group,
        )
        chunks = recv.split([mine * row * s for s in seqs])
        return torch.cat(
            [c.view(mine, three, batch, s, dim) for c, s in zip(chunks, seqs, strict=True)], dim=3
        )

    def _to_sequence(self, out: Tensor, seqs: list[int], groups: list[int], local: int) -> Tensor:
        """(h_r, B, S, D) head-split → (B, s_r, H, D) sequence-split."""
        mine, batch, _, dim = out.shape
        send = torch.cat([c.reshape(-1) for c in out.split(seqs, dim=2)])
        recv = out.new_empty(sum(groups) * batch * local * dim)
        dist.all_to_all_single(
            recv,
            send,
            output_split_sizes=[g * batch * local * dim for g in groups],
            input_split_sizes=[mine * batch * s * dim for s in seqs],
            group=self.group,
        )
        return recv.view(sum(groups), batch, local, dim).permute(1, 2, 0, 3)


class ParallelDiT(nn.Module):
    """Rank 0's DiT under context parallel: each call first broadcasts its inputs to the other ranks
    (which run `follow`), then runs the split forward with them. Drop-in for the denoiser (batched API).

    `name` (None: the followers hold this DiT from the start) is what the followers' `load` takes: sent
    in a LOAD before the first forward, and again whenever another ParallelDiT ran in between."""

    batched_api = True

    def __init__(self, dit: ZImageDiT, context: ContextParallel, name: str | None = None) -> None:
        super().__init__()
        if context.rank != 0:
            raise ValueError("ParallelDiT runs on rank 0; the other ranks call follow(dit, context)")
        dit.set_context_parallel(context)
        self.dit, self.context, self.name = dit, context, name

    @property
    def input_dtype(self) -> torch.dtype | None:
        return self.dit.input_dtype

    def forward(self, x: Tensor, t: Tensor, captions: list[Tensor], **options: Any) -> Tensor:
        if len(captions) > HEADER - 8:
            raise ValueError(f"context parallel takes batches of at most {HEADER - 8} (got {len(captions)})")
        header = torch.zeros(HEADER, dtype=torch.long)
        header[:8] = torch.tensor(
            [FORWARD, *x.shape, DTYPES.index(x.dtype), captions[0].shape[1], len(captions)]
        )
        header[8 : 8 + len(captions)] = torch.tensor([len(c) for c in captions])
        try:
            self.select()
            _broadcast(header.to(x.device), self.context)
            for tensor in (x.contiguous(), t.to(x.dtype).contiguous(), torch.cat(captions).to(x.dtype)):
                _broadcast(tensor, self.context)
            return self.dit(x, t, captions, **options)
        except Exception:
            if self.context.on_failure is not None:
                self.context.on_failure()
            raise

    def select(self) -> None:
        """Make the followers run this DiT (a LOAD when they run another one, or none yet)."""
        if self.name is None or self.context.selected == self.name:
            return
        payload = torch.tensor(list(self.name.encode("utf-8")), dtype=torch.uint8, device=self.device)
        header = torch.zeros(HEADER, dtype=torch.long, device=self.device)
        header[:2] = torch.tensor([LOAD, payload.numel()])
        _broadcast(header, self.context)
        _broadcast(payload, self.context)
        self.context.selected = self.name

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    def stop(self) -> None:
        """Release the followers (their `follow` returns)."""
        stop_followers(self.context, self.device)


def stop_followers(context: ContextParallel, device: torch.device) -> None:
    """Rank 0: the STOP command (`device`: where this rank's collectives run)."""
    _broadcast(torch.zeros(HEADER, dtype=torch.long, device=device), context)


def follow(
    dit: ZImageDiT | None,
    context: ContextParallel,
    load: Callable[[str], ZImageDiT] | None = None,
    device: torch.device | None = None,
) -> int:
    """Ranks 1..G−1: run every forward rank 0's `ParallelDiT` broadcasts until it stops; returns the count.

    `dit`: the DiT to run (None: the first LOAD names it); `load` turns a LOAD's name into a DiT (a
    caching loader: rank 0 sends LOAD again when it switches back); `device` where collectives run
    (default: `dit`'s)."""
    if dit is not None:
        dit.set_context_parallel(context)
        device = device or next(dit.parameters()).device
    if device is None:
        raise ValueError("follow needs a DiT or the device its collectives run on")
    calls = 0
    while True:
        header = torch.empty(HEADER, dtype=torch.long, device=device)
        _broadcast(header, context)
        command, *fields = header[:8].tolist()
        if command == STOP:
            return calls
        if command == LOAD:
            dit = _load(fields[0], load, device, context)
            continue
        if dit is None:
            raise ValueError("context parallel: FORWARD before any LOAD")
        _forward(dit, header, device, context)
        calls += 1


def _load(
    size: int, load: Callable[[str], ZImageDiT] | None, device: torch.device, context: ContextParallel
) -> ZImageDiT:
    name = bytes(_received((size,), torch.uint8, device, context).tolist()).decode("utf-8")
    if load is None:
        raise ValueError(f"context parallel: LOAD {name!r} sent to a follower without a loader")
    dit = load(name)
    dit.set_context_parallel(context)
    return dit


def _forward(dit: ZImageDiT, header: Tensor, device: torch.device, context: ContextParallel) -> None:
    _, batch, channels, height, width, dtype_id, cap_dim, count = header[:8].tolist()
    dtype = DTYPES[dtype_id]
    lengths = header[8 : 8 + count].tolist()
    x = _received((batch, channels, height, width), dtype, device, context)
    t = _received((batch,), dtype, device, context)
    captions = list(_received((sum(lengths), cap_dim), dtype, device, context).split(lengths))
    with torch.inference_mode():
        dit(x, t, captions)


def _broadcast(tensor: Tensor, context: ContextParallel) -> None:
    dist.broadcast(
        tensor, src=dist.get_global_rank(context.group, 0) if context.group else 0, group=context.group
    )


def _received(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, context: ContextParallel
) -> Tensor:
    tensor = torch.empty(shape, dtype=dtype, device=device)
    _broadcast(tensor, context)
    return tensor


__all__ = ["ContextParallel", "ParallelDiT", "even_split", "follow", "stop_followers"]
