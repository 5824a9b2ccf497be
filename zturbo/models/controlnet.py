"""Z-Image Fun ControlNet Union (alibaba-pai, VideoX-Fun) on zturbo's DiT: the spec of each release,
zturbo's own form of the control blocks, and the per-forward state that adds their hints.

A release is a stack of control blocks (VACE-style): each is a Z-Image block whose input is the
running control stream `c` (block 0 first adds `before_proj(c) + x`, x being the DiT's own tokens) and
which also emits a hint `after_proj(c)`; hint k is scaled by the strength and added after the DiT layer
at place k. What differs between releases (see `ControlNetSpec`):

- 1.0: 16 control channels; a plain two-block refiner runs on the control tokens alone; 6 control
  blocks after main layers 0, 5, ..., 25.
- 2.0: 33 channels (control latent ‖ 1 − mask ‖ masked-image latent); the control blocks themselves run
  over the image tokens in the refiner stage (hints 0 and 1 go after noise-refiner layers 0 and 1), and
  again over the unified sequence; 15 blocks after layers 0, 2, ..., 28. Its file carries a
  `control_noise_refiner` whose projections are all zero (trained "incorrectly", never used).
- 2.1 (also Tile 2.1, the 2602-8steps files and Z-Image-Fun-Controlnet-Union-2.1 for the base model):
  as 2.0, with a trained two-block control refiner for the refiner stage.
- 2.1 Lite: 2.1 with 3 control blocks, after layers 0, 10, 20.

Control blocks run over the same unified `[image, caption]` sequence as the DiT (the caption part of
the control stream is the DiT's refined caption), with its RoPE and masks. Places are spread evenly:
block k after main layer k·round(n_layers / n_blocks), as VideoX-Fun's configs and ComfyUI have them.

Two references disagree on one point (2.x only): VideoX-Fun (the training code) and ComfyUI add the
refiner hints to the DiT's own noise refiner; diffusers' `ZImageControlNetModel` adds them only to the
ControlNet's private copy of the refiner pass, so the DiT's stream never sees them. `refiner_to_base`
picks: True (the default, as trained) or False (diffusers' pipeline, exactly). ComfyUI further runs
the control blocks over the image tokens only (no caption), which zturbo does not reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zturbo.errors import InputError
from zturbo.models.zimage_convert import convert_block
from zturbo.models.zimage_dit import BlockRunner, ZImageBlock, ZImageDiT, call_block
from zturbo.models.zimage_layout import SequencePlan

PATCH = 2
PLAIN, CONTROL_LAYERS, CONTROL_REFINER = "plain", "control_layers", "control_noise_refiner"
INPAINT_CHANNELS = 33  # 16 control + 1 mask + 16 masked image


@dataclass(frozen=True)
class ControlNetSpec:
    """A ControlNet's structure, read off its tensors (`checkpoints.controlnet.spec_from_shapes`).

    `refiner`: how the refiner stage runs. PLAIN (1.0): `refiner_blocks` plain blocks on the control
    tokens alone, no hints; CONTROL_LAYERS (2.0): the control blocks; CONTROL_REFINER (2.1): its own
    `refiner_blocks` control blocks. In the last two, refiner hint j goes after noise-refiner layer j.
    """

    release: str
    control_in_dim: int
    n_blocks: int
    refiner: str
    dim: int
    n_heads: int
    refiner_blocks: int = 2

    @property
    def inpaint(self) -> bool:
        """Whether the control tokens carry a mask and a masked image (2.x)."""
        return self.control_in_dim == INPAINT_CHANNELS

    @property
    def refiner_hints(self) -> bool:
        return self.refiner != PLAIN

    def places(self, main_layers: int) -> tuple[int, ...]:
        """The main layers after which each control block's hint is added."""
        step = round(main_layers / self.n_blocks)
        places = tuple(k * step for k in range(self.n_blocks))
        if step < 1 or places[-1] >= main_layers:
            raise ValueError(
                f"a ControlNet with {self.n_blocks} control blocks does not fit a {main_layers}-layer model"
            )
        return places

    def diffusers_kwargs(self, main_layers: int) -> dict:
        """`ZImageControlNetModel` arguments for this spec on a DiT of `main_layers` layers."""
        return {
            "control_layers_places": list(self.places(main_layers)),
            "control_refiner_layers_places": list(range(self.refiner_blocks)) if self.refiner_hints else None,
            "control_in_dim": self.control_in_dim,
            "add_control_noise_refiner": None if self.refiner == PLAIN else self.refiner,
            "dim": self.dim,
            "n_refiner_layers": self.refiner_blocks,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_heads,
        }


class ControlBlock(nn.Module):
    """A control block: `c ← block(before_proj(c) + x)` (block 0) or `block(c)`; returns (hint, c)."""

    def __init__(self, block: ZImageBlock, before: nn.Module | None, after: nn.Module) -> None:
        super().__init__()
        self.block, self.before_proj, self.after_proj = block, before, after

    def forward(
        self,
        c: Tensor,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        adaln: Tensor,
        run_block: BlockRunner = call_block,
    ) -> tuple[Tensor, Tensor]:
        if self.before_proj is not None:
            c = self.before_proj(c) + x
        c = run_block(self.block, c, cos, sin, mask, adaln)
        return self.after_proj(c), c


class ZImageControlNet(nn.Module):
    """zturbo's form of a loaded ControlNet (fused GEMMs like `ZImageDiT`), sharing the loaded tensors."""

    def __init__(
        self, spec: ControlNetSpec, embedder: nn.Module, refiner: list[nn.Module], layers: list[ControlBlock]
    ) -> None:
        super().__init__()
        self.spec = spec
        self.embedder = embedder
        self.refiner = nn.ModuleList(refiner)
        self.layers = nn.ModuleList(layers)

    def blocks(self) -> list[nn.Module]:
        """Every block, in the order a forward first runs them (what streaming walks)."""
        return [*self.refiner, *self.layers]

    def embed(self, context: Tensor, plan: SequencePlan, pad_token: Tensor) -> Tensor:
        """Control latents (B, C, h, w) → tokens, padded to the DiT's image length with its x pad token."""
        batch, channels, height, width = context.shape
        patches = context.view(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, plan.image_len, PATCH * PATCH * channels)
        tokens = self.embedder(patches)
        return torch.cat([tokens, pad_token.expand(batch, plan.image_padded - plan.image_len, -1)], dim=1)


def from_diffusers(module: Any, spec: ControlNetSpec) -> ZImageControlNet:
    """Convert a loaded diffusers `ZImageControlNetModel` (its tensors shared; fused Q‖K‖V and W1‖W3).

    `Any`: read by duck typing, like `zturbo.models.zimage_convert.from_diffusers`."""

    def control(block: Any) -> ControlBlock:
        return ControlBlock(convert_block(block), getattr(block, "before_proj", None), block.after_proj)

    if spec.refiner == PLAIN:
        refiner: list[nn.Module] = [convert_block(b) for b in module.control_noise_refiner]
    elif spec.refiner == CONTROL_REFINER:
        refiner = [control(b) for b in module.control_noise_refiner]
    else:
        refiner = []
    layers = [control(b) for b in module.control_layers]
    return ZImageControlNet(spec, module.control_all_x_embedder["2-1"], refiner, layers)


@dataclass(frozen=True)
class ControlInput:
    """One ControlNet applied to one forward: its module, control latents (B or 1, C, h, w) in the
    model's latent space, the strength hints are scaled by, and which reference's refiner to follow."""

    net: ZImageControlNet
    context: Tensor
    strength: float
    refiner_to_base: bool = True

    def start(self, dit: ZImageDiT, image: Tensor, plan: SequencePlan, adaln: Tensor) -> ControlRun:
        """The hook object `ZImageDiT.forward` drives (called right after the image is embedded)."""
        return ControlRun(dit, self, image, plan, adaln)


class ControlRun:
    """The control stream of one ControlNet through one DiT forward (created by `ZImageDiT.forward`).

    The DiT calls `after_refiner(j, image)` after noise-refiner layer j, `start_main(unified, caption)`
    before the main layers and `after_layer(i, x)` after main layer i; each returns the DiT's tokens
    with this ControlNet's hint added where it has one. Control blocks run just before their hint is
    needed, so only the stream and one hint are alive at a time (not all 15 hints).
    """

    def __init__(
        self, dit: ZImageDiT, control: ControlInput, image: Tensor, plan: SequencePlan, adaln: Tensor
    ):
        self.dit, self.net, self.strength = dit, control.net, control.strength
        self.refiner_to_base = control.refiner_to_base
        self.plan, self.adaln, self.spec = plan, adaln, control.net.spec
        context = control.context.to(image.device, image.dtype)
        if context.shape[0] != image.shape[0]:
            context = (
                context.expand(image.shape[0], -1, -1, -1)
                if context.shape[0] == 1
                else context.repeat(image.shape[0] // context.shape[0], 1, 1, 1)
            )
        self.c = self.net.embed(context, plan, dit.x_pad_token)
        self.x = image  # the DiT's embedded image tokens: block 0's `x` in the refiner stage
        self.places = {p: k for k, p in enumerate(self.spec.places(len(dit.layers)))}
        self.stream = image  # the refiner-stage tokens the control layers see (differ only if not to_base)
        cos, sin = plan.image_rope
        if self.spec.refiner == PLAIN:
            for block in self.net.refiner:  # ZImageBlocks (nn.ModuleList items type as Module)
                self.c = dit.run_block(block, self.c, cos, sin, None, adaln)  # type: ignore[arg-type]

    def _refiner_block(self, j: int) -> nn.Module:
        return (self.net.layers if self.spec.refiner == CONTROL_LAYERS else self.net.refiner)[j]

    def after_refiner(self, j: int, image: Tensor) -> Tensor:
        if not self.spec.refiner_hints or j >= self.spec.refiner_blocks:
            return image
        cos, sin = self.plan.image_rope
        hint, self.c = self._refiner_block(j)(self.c, self.x, cos, sin, None, self.adaln, self.dit.run_block)
        if j == self.spec.refiner_blocks - 1 and self.spec.refiner == CONTROL_LAYERS:
            for block in self.net.layers[self.spec.refiner_blocks :]:  # 2.0: the rest of the stack
                _, self.c = block(self.c, self.x, cos, sin, None, self.adaln, self.dit.run_block)
        hint = hint * self.strength
        if self.refiner_to_base:
            self.stream = image + hint
            return self.stream
        # diffusers: the hint reaches only the ControlNet's own copy of the refiner pass
        previous = self.x if j == 0 else self.stream
        block = self.dit.noise_refiner[j]  # a ZImageBlock (nn.ModuleList items type as Module)
        self.stream = self.dit.run_block(block, previous, cos, sin, None, self.adaln) + hint  # type: ignore[arg-type]
        return image

    def start_main(self, unified: Tensor, caption: Tensor) -> None:
        """Before main layer 0: the control stream joins the DiT's refined caption; block 0's `x` is the
        unified sequence (the ControlNet's own copy of it when the refiner hints did not reach the DiT)."""
        self.c = torch.cat([self.c, caption], dim=1)
        self.x = (
            unified
            if self.refiner_to_base or not self.spec.refiner_hints
            else torch.cat([self.stream, caption], dim=1)
        )

    def after_layer(self, i: int, x: Tensor) -> Tensor:
        k = self.places.get(i)
        if k is None:
            return x
        cos, sin = self.plan.rope
        hint, self.c = self.net.layers[k](
            self.c, self.x, cos, sin, self.plan.mask, self.adaln, self.dit.run_block
        )
        return x + hint * self.strength


def batched(t: Tensor, n: int) -> Tensor:
    if t.shape[0] == n:
        return t
    if n % t.shape[0]:
        raise InputError(f"control images of batch {t.shape[0]} cannot be spread over a batch of {n}")
    return t.repeat(n // t.shape[0], 1, 1, 1)


def _share_base(controlnet: nn.Module, transformer: nn.Module) -> None:
    """diffusers' `from_transformer`, without registering the transformer's modules as the
    ControlNet's own (which would move or stream them with it)."""
    for name in (
        "t_scale", "t_embedder", "all_x_embedder", "cap_embedder", "rope_embedder",
        "noise_refiner", "context_refiner", "x_pad_token", "cap_pad_token",
    ):  # fmt: skip
        object.__setattr__(controlnet, name, getattr(transformer, name))


def reference_block_samples(
    transformer: Any, controls: list, latents: list[Tensor], t: Tensor, captions: list[Tensor]
) -> dict[int, Tensor] | None:
    """diffusers' ControlNet model(s) → `controlnet_block_samples` (summed over ControlNets)."""
    samples: dict[int, Tensor] = {}
    for control in controls:
        module = control.module
        _share_base(module, transformer)
        module.control_layers_places = list(control.spec.places(len(transformer.layers)))
        param = next(module.parameters())
        context = control.context.to(param.device, param.dtype)
        context = batched(context, len(latents))
        out = module(
            latents, t, captions, list(context.unsqueeze(2).unbind(0)), conditioning_scale=control.strength
        )
        for index, sample in out.items():
            samples[index] = samples[index] + sample if index in samples else sample
    return samples or None
