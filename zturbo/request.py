"""What a user asks for: one text-to-image request, validated at the boundary.

Defaults are the official ComfyUI Z-Image-Turbo workflow's: 1024×1024, 8 steps, cfg 1,
`res_multistep` with the `simple` schedule, shift 3.

Image to image (`image`, `denoise` < 1), inpainting (`mask`) and the refine-at-a-larger-size pass
(`hires_scale` > 1, with an optional `upscale_model`) are fields of the same request; `fit_rule` says
how an init image is brought to width×height.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from zturbo.errors import InputError
from zturbo.sampling.noise import SEED_MAX
from zturbo.sampling.variety import check_variety

MAX_SIDE = 4096
MAX_BATCH = 64
MAX_PROMPT_CHARS = 20000  # far beyond the 512-token encoder cap; keeps requests bounded


MAX_LORAS = 16
LORA_STRENGTH_LIMIT = 100.0  # LoraLoader's range
_TRAILING_NUMBER = re.compile(r":([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$")


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA of a request: a file (a path, or a name in models/loras), its strength on the diffusion
    model, on the text encoder (None: the same, as `--lora FILE:S`), and the content hash recorded with
    an image (A1111's "autov3", see zturbo.lora.files; "" when not known). Applied in the patch step."""

    name: str
    strength: float = 1.0
    clip_strength: float | None = None
    hash: str = ""

    @property
    def text_encoder_strength(self) -> float:
        return self.strength if self.clip_strength is None else self.clip_strength

    @classmethod
    def parse(cls, text: str) -> LoraChoice:
        """`FILE`, `FILE:STRENGTH` or `FILE:MODEL:CLIP`. Strengths are taken only from trailing
        `:number` parts, so `C:\\x\\a.safetensors:0.8` is the file `C:\\x\\a.safetensors` at 0.8."""
        name, numbers = text.strip(), list[float]()
        while len(numbers) < 2 and (match := _TRAILING_NUMBER.search(name)) and match.start() > 0:
            numbers.insert(0, float(match.group(1)))
            name = name[: match.start()]
        if not name or name.endswith(":") or name.startswith(":"):
            raise InputError(f"--lora {text!r}: expected FILE, FILE:STRENGTH or FILE:MODEL:CLIP")
        return cls(name, *numbers)  # type: ignore[arg-type]

    def validate(self) -> LoraChoice:
        for what, value in (("strength", self.strength), ("text encoder strength", self.clip_strength)):
            if value is not None and not -LORA_STRENGTH_LIMIT <= value <= LORA_STRENGTH_LIMIT:
                raise InputError(f"LoRA {self.name}: {what} must be between -100 and 100 (got {value})")
        return self


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
    image: str = ""  # init image: a path (CLI) or an input-folder name (server); "" = text to image
    mask: str = ""  # inpaint mask, white = repaint; "alpha": the image's transparency (ComfyUI's LoadImage)
    mask_grow: int = 8  # pixels the mask grows by before sampling (GrowMask)
    mask_blur: int = 4  # radius of the blur of the pasted-back edge (ImageBlur); 0 = hard edge
    hires_scale: float = 1.0  # > 1: upscale the result and refine it at this factor
    hires_steps: int = 5  # the refine pass (the official 2K upscaler template's settings)
    hires_denoise: float = 0.33
    upscale_model: str = ""  # an upscale_models file for the upscale before refining; "" = Lanczos
    loras: tuple[LoraChoice, ...] = ()  # applied in order in the patch step (after load, before encode)
    variety: float = 0.0  # seed variety strength (zturbo.sampling.variety); 0 = off
    variety_steps: float = 0.3  # the fraction of the first steps it acts on
    enhanced_from: str = ""  # the idea the prompt enhancer rewrote into `prompt` (metadata only)

    @property
    def hires_size(self) -> tuple[int, int]:
        """The refine pass's size: width and height × hires_scale, to multiples of 16."""
        return (_to16(self.width * self.hires_scale), _to16(self.height * self.hires_scale))

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
        if len(self.loras) > MAX_LORAS:
            raise InputError(f"at most {MAX_LORAS} LoRAs at once (got {len(self.loras)})")
        for lora in self.loras:
            lora.validate()
        check_variety(self.variety, self.variety_steps)
        return self._validate_image_fields()

    def _validate_image_fields(self) -> GenerationRequest:
        if not 0.0 <= self.denoise <= 1.0:
            raise InputError(f"denoise must be between 0 and 1 (got {self.denoise})")
        if self.denoise < 1.0 and not self.image:
            raise InputError("denoise below 1 needs an init image (--image)")
        if self.mask and not self.image:
            raise InputError("a mask needs the image it applies to (--image)")
        if self.image and self.batch != 1:
            raise InputError("with an init image the batch is 1; run again with other seeds for more")
        if not 0 <= self.mask_grow <= 64:
            raise InputError(f"mask grow must be between 0 and 64 pixels (got {self.mask_grow})")
        if not 0 <= self.mask_blur <= 31:
            raise InputError(f"mask blur must be between 0 and 31 pixels (got {self.mask_blur})")
        if not 1.0 <= self.hires_scale <= 4.0:
            raise InputError(f"hires scale must be between 1 and 4 (got {self.hires_scale})")
        if not 1 <= self.hires_steps <= 1000:
            raise InputError(f"hires steps must be between 1 and 1000 (got {self.hires_steps})")
        if not 0.0 < self.hires_denoise <= 1.0:
            raise InputError(f"hires denoise must be above 0 and at most 1 (got {self.hires_denoise})")
        if self.image and self.denoise == 0 and self.hires_scale == 1.0:
            raise InputError("denoise 0 without an upscale leaves the image as it is; nothing to do")
        if self.hires_scale > 1.0 and max(self.hires_size) > MAX_SIDE:
            w, h = self.hires_size
            raise InputError(f"the refined image would be {w}×{h}; at most {MAX_SIDE} pixels a side")
        return self


def _to16(value: float) -> int:
    return max(16, round(value / 16) * 16)


def default_size(image_width: int, image_height: int, megapixels: float | None = None) -> tuple[int, int]:
    """The size an init image is generated at when none is asked for: its own, cropped down to multiples
    of 16, or (with `megapixels`) its aspect ratio at that many megapixels (1 = 1024×1024)."""
    if megapixels is None:
        return max(16, image_width // 16 * 16), max(16, image_height // 16 * 16)
    scale = math.sqrt(megapixels * 1024 * 1024 / (image_width * image_height))
    return _to16(image_width * scale), _to16(image_height * scale)


def fit_rule(image_width: int, image_height: int, width: int, height: int) -> str:
    """How an init image becomes width×height: "crop" (centre crop, no resampling) when the target is
    the image cropped to multiples of 16, else "scale" (Lanczos to cover the target, centre-cropped:
    ComfyUI's ImageScale with crop="center")."""
    fits = width <= image_width and height <= image_height
    return "crop" if fits and (width, height) == default_size(image_width, image_height) else "scale"


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
