"""What a user asks for: one text-to-image request, validated at the boundary.

Defaults are the official ComfyUI Z-Image-Turbo workflow's: 1024×1024, 8 steps, cfg 1,
`res_multistep` with the `simple` schedule, shift 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zturbo.errors import InputError
from zturbo.sampling.noise import SEED_MAX

MAX_SIDE = 4096
MAX_BATCH = 64
MAX_PROMPT_CHARS = 20000  # far beyond the 512-token encoder cap; keeps requests bounded


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 8
    cfg: float = 1.0
    sampler: str = "res_multistep"
    scheduler: str = "simple"
    shift: float = 3.0
    seed: int = 0
    batch: int = 1
    denoise: float = 1.0

    def validate(self, samplers: list[str], schedulers: list[str]) -> GenerationRequest:
        for name, text in (("prompt", self.prompt), ("negative", self.negative)):
            if len(text) > MAX_PROMPT_CHARS:
                raise InputError(
                    f"{name} is {len(text)} characters long; at most {MAX_PROMPT_CHARS} are accepted"
                )
        for name, value in (("width", self.width), ("height", self.height)):
            if value < 16 or value % 16 or value > MAX_SIDE:
                nearest = min(MAX_SIDE, max(16, round(value / 16) * 16))
                raise InputError(
                    f"{name} must be a multiple of 16 between 16 and {MAX_SIDE} (got {value}; try {nearest})"
                )
        if not 1 <= self.steps <= 1000:
            raise InputError(f"steps must be between 1 and 1000 (got {self.steps})")
        if not 1 <= self.batch <= MAX_BATCH:
            raise InputError(f"batch must be between 1 and {MAX_BATCH} (got {self.batch})")
        if not 0.0 <= self.cfg <= 100.0:
            raise InputError(f"cfg must be between 0 and 100 (got {self.cfg})")
        if not 0 <= self.seed <= SEED_MAX:
            raise InputError(f"seed must be between 0 and 2^64-1 (got {self.seed})")
        if self.shift <= 0:
            raise InputError(f"shift must be positive (got {self.shift})")
        if self.sampler not in samplers:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(samplers)}")
        if self.scheduler not in schedulers:
            raise InputError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(schedulers)}")
        return self


def size_for_aspect(aspect: str, megapixels: float = 1.0) -> tuple[int, int]:
    """Width and height (multiples of 16) for an aspect ratio like "16:9" and a pixel budget.

    One megapixel is 1024×1024 pixels, as in ComfyUI's resolution nodes: 1:1 at 1 MP is 1024×1024.
    """
    try:
        w_ratio, h_ratio = (float(part) for part in aspect.replace("x", ":").split(":"))
        if w_ratio <= 0 or h_ratio <= 0:
            raise ValueError
    except ValueError:
        raise InputError(f"aspect must look like 16:9 (got {aspect!r})") from None
    if not 0.01 <= megapixels <= 16:
        raise InputError(f"megapixels must be between 0.01 and 16 (got {megapixels})")
    pixels = megapixels * 1024 * 1024
    width = math.sqrt(pixels * w_ratio / h_ratio)
    height = width * h_ratio / w_ratio
    return max(16, round(width / 16) * 16), max(16, round(height / 16) * 16)
