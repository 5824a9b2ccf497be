"""Latent batch nodes: repeat a batch, take part of one (ComfyUI's RepeatLatentBatch, LatentFromBatch).

Both keep `batch_index` (which images of the original batch these are), which the samplers' starting
noise follows, and any `noise_mask`, as ComfyUI does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from zturbo.nodes.base import Node
from zturbo.nodes.schema import Int, Link, NodeSchema, Output

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext

MAX_RESOLUTION = 16384


class LatentFromBatch(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="LatentFromBatch",
        display_name="Get Latent From Batch",
        category="model/latent/batch",
        inputs=(
            Link("samples", "LATENT"),
            Int("batch_index", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION),
            Int("length", default=1, min=1, max=64),
        ),
        outputs=(Output("LATENT"),),
    )

    def execute(self, ctx: NodeContext, samples: dict, batch_index: int, length: int) -> tuple[dict]:
        out = dict(samples)
        latent = samples["samples"]
        size = latent.shape[0]
        start = batch_index + size if batch_index < 0 else batch_index  # negative counts from the end
        start = max(0, min(size - 1, start))
        length = min(size - start, length)
        out["samples"] = latent[start : start + length].clone()
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                out["noise_mask"] = masks.clone()
            else:
                if masks.shape[0] < size:
                    masks = masks.repeat(math.ceil(size / masks.shape[0]), 1, 1, 1)[:size]
                out["noise_mask"] = masks[start : start + length].clone()
        if "batch_index" in samples:
            out["batch_index"] = samples["batch_index"][start : start + length]
        else:
            out["batch_index"] = list(range(start, start + length))
        return (out,)


class RepeatLatentBatch(Node):
    schema: ClassVar[NodeSchema] = NodeSchema(
        name="RepeatLatentBatch",
        display_name="Repeat Latent Batch",
        category="model/latent/batch",
        inputs=(Link("samples", "LATENT"), Int("amount", default=1, min=1, max=64)),
        outputs=(Output("LATENT"),),
    )

    def execute(self, ctx: NodeContext, samples: dict, amount: int) -> tuple[dict]:
        out = dict(samples)
        latent = samples["samples"]
        out["samples"] = latent.repeat((amount,) + (1,) * (latent.ndim - 1))
        masks = samples.get("noise_mask")
        if masks is not None and masks.shape[0] > 1:  # a single mask applies to every image as it is
            out["noise_mask"] = masks.repeat((amount,) + (1,) * (masks.ndim - 1))
        if "batch_index" in out:
            indices = out["batch_index"]
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = indices + [x + i * offset for i in range(1, amount) for x in indices]
        return (out,)


NODES = (LatentFromBatch, RepeatLatentBatch)
