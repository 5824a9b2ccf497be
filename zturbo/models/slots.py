"""Where a reference-layout weight lives inside a running module.

Patches (LoRAs and the like) name weights as the reference classes do: diffusers'
`ZImageTransformer2DModel` for the DiT, transformers' `Qwen3Model` for the text encoder. zturbo runs
its own DiT, which fuses Q‖K‖V and W1‖W3 into one matrix each; a `WeightSlot` says which layer holds
a reference weight and which of its rows it is (`zimage_convert.dit_slots`). For the reference
classes themselves every weight is its own slot (`module_slots`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True, eq=False)
class WeightSlot:
    """`module.<name>`, rows `start:stop` of it (None: all of them)."""

    module: nn.Module
    name: str
    start: int = 0
    stop: int | None = None

    @property
    def parameter(self) -> Tensor | None:
        """The plain tensor that holds the weight, or None when the layer stores it in another form
        (a quantized layer expands its weight on every call)."""
        param = self.module._parameters.get(self.name)
        return None if param is None else param.data

    @property
    def exists(self) -> bool:
        """A plain tensor, or the weight of a layer that computes it (a quantized Linear)."""
        return self.parameter is not None or (self.name == "weight" and hasattr(self.module, "in_features"))

    def rows(self, tensor: Tensor) -> Tensor:
        return tensor if self.stop is None and self.start == 0 else tensor[self.start : self.stop]


def module_slots(module: nn.Module) -> dict[str, WeightSlot]:
    """Every parameter of a reference-layout module as its own slot (quantized layers by their weight)."""
    slots: dict[str, WeightSlot] = {}
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, param in sub._parameters.items():
            if param is not None:
                slots[dot + name] = WeightSlot(sub, name)
        if "weight" not in sub._parameters and hasattr(sub, "in_features"):  # a quantized Linear
            slots[dot + "weight"] = WeightSlot(sub, "weight")
    return slots
