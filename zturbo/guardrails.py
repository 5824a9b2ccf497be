"""Model-aware defaults and guardrails: Turbo vs Base, their settings, and warnings for settings
that do nothing or harm (a negative prompt at cfg 1; Turbo, a distilled model, above cfg 1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath

from zturbo.request import GenerationRequest

TURBO, BASE, UNKNOWN = "turbo", "base", "unknown"


@dataclass(frozen=True)
class VariantDefaults:
    steps: int
    cfg: float
    sampler: str


DEFAULTS: dict[str, VariantDefaults] = {
    TURBO: VariantDefaults(steps=8, cfg=1.0, sampler="res_multistep"),
    BASE: VariantDefaults(steps=30, cfg=4.0, sampler="res_multistep"),
}


def model_variant(filename: str, metadata: Mapping[str, str] | None = None) -> str:
    """Turbo or Base from the safetensors metadata (any value naming it) or else the file name."""
    texts = [str(v).lower() for v in (metadata or {}).values()] + [PurePath(filename).name.lower()]
    for text in texts:
        if "turbo" in text:
            return TURBO
        if "base" in text and ("z-image" in text or "z_image" in text or "zimage" in text):
            return BASE
    return UNKNOWN


def defaults_for(variant: str) -> VariantDefaults:
    """The steps/cfg/sampler to use for a variant; an unknown model gets Turbo's (the official default)."""
    return DEFAULTS.get(variant, DEFAULTS[TURBO])


def warnings_for(request: GenerationRequest, variant: str) -> list[str]:
    """One line per setting that is ignored or off-recipe for this model."""
    out: list[str] = []
    if request.negative.strip() and request.cfg == 1.0:
        out.append("the negative prompt does nothing at cfg 1; raise cfg (e.g. 4 on Base) to use it")
    if variant == TURBO and request.cfg > 1.0:
        out.append(
            f"Z-Image-Turbo is distilled for cfg 1; cfg {request.cfg:g} doubles the work and tends to "
            "burn the image"
        )
    return out


def apply_defaults(request: GenerationRequest, variant: str, given: Iterable[str]) -> GenerationRequest:
    """The variant's steps/cfg/sampler for each of those the user did not give."""
    chosen = defaults_for(variant)
    fields = {k: getattr(chosen, k) for k in ("steps", "cfg", "sampler") if k not in set(given)}
    return replace(request, **fields)
