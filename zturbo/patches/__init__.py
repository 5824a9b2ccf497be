"""The weight-patch seam: changes to a loaded component's weights, attached to the value that runs it.

A patch is anything shaped like `zturbo.lora.read.WeightPatch` (LoRA, LoKr, LoHa, DoRA and full
differences are): it names `targets` in the component's *reference layout* (diffusers'
`ZImageTransformer2DModel` names for the DiT, transformers' `Qwen3Model` names for the text encoder),
with the rows of its delta split across them, and an `adapter` that computes the patched weight
(`merged`) and, for plain low-rank ones, its factors (`factors`).

Patches travel with the MODEL / CLIP value (`PatchSet`, ComfyUI's "clone + add_patches"); nothing is
computed when a LoRA is attached. Right before the component runs, `PatchState.sync` makes the live
weights carry exactly that set: what the previous set changed is restored bit for bit from its
backup, then each target is patched where it lives (`apply.py` says how for fused, quantized,
streamed and compiled weights). Removing a LoRA or changing its strength is another sync, never a
reload of the base files.
"""

from zturbo.patches.base import Patch, PatchSet, WeightPatchLike

__all__ = ["Patch", "PatchSet", "WeightPatchLike"]
