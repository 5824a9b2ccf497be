"""`EngineSettings`: every choice about how the engine runs, validated once, passed as one object.

The CLI (`generate`, `run`, `serve`), the server's config, the benchmarks and the tests all build one
of these; nothing below it takes the choices as loose arguments. Construction checks every field and
raises `InputError` naming the bad one, so a typo fails before any model file is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from zturbo.checkpoints.load import WEIGHT_DTYPES
from zturbo.errors import InputError
from zturbo.runtime.compile import SpeedOptions
from zturbo.runtime.device import Placement
from zturbo.runtime.memory import MemoryPlan, parse_vram


@dataclass(frozen=True)
class EngineSettings:
    """How the engine runs.

    - `device` auto | cuda | cuda:N | mps | cpu; `dtype` auto | bf16 | fp16 | fp32 (auto: bf16 on a GPU
      with bf16, the fp16-safe path on one without, fp32 on the CPU: `runtime.device`).
    - `vram`: the GPU memory to plan for ("auto" = free VRAM, "8G", "unlimited"), or None for no
      planning at all (every component resident: the library default).
    - `speed` reference | eager | compile | max, `step_cache` (0 = off): `runtime.compile.SpeedOptions`.
    - `weight_dtype`: how a diffusion model loads when the caller does not say (UNETLoader says).
    - `compile_mode`, `compile_cache`: torch.compile's mode and persistent cache folder.
    - `plan`: a fixed memory plan instead of planning (tests, benchmarks); `vram` is then ignored.
    - `bf16`: None asks the GPU whether it has bf16; False makes `auto` pick what a GPU without it
      runs (fp16-safe DiT, fp32 VAE), so a benchmark can run a small card's dtypes on a big one.
    """

    device: str = "auto"
    dtype: str = "auto"
    vram: str | None = None
    speed: str = "eager"
    step_cache: float = 0.0
    weight_dtype: str = "default"
    compile_mode: str = "default"
    compile_cache: Path | None = None  # None: env ZTURBO_COMPILE_CACHE or ~/.cache/zturbo/inductor
    plan: MemoryPlan | None = None
    bf16: bool | None = None  # None: as the GPU says; False: a GPU without bf16's dtypes (benchmarks)
    placement: Placement = field(init=False, repr=False, compare=False)
    speed_options: SpeedOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement", Placement.create(self.device, self.dtype, self.bf16))
        object.__setattr__(
            self,
            "speed_options",
            SpeedOptions(self.speed, self.compile_mode, self.compile_cache, step_cache=self.step_cache),
        )
        if self.speed == "reference" and self.placement.fp16_dit:
            raise InputError(
                "--speed reference runs diffusers' class unchanged, which has no fp16-safe path (plain fp16 "
                "gives black images): use --speed eager (or compile, max), or --dtype fp32"
            )
        if self.vram is not None:
            parse_vram(self.vram)
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise InputError(
                f"weight dtype must be one of {', '.join(WEIGHT_DTYPES)} (got {self.weight_dtype!r})"
            )

    @property
    def plans_memory(self) -> bool:
        """Whether the engine keeps a memory plan (a budget to plan for, or a fixed plan)."""
        return self.vram is not None or self.plan is not None

    def replace(self, **changes: object) -> EngineSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
