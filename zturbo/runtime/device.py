"""Device and dtype choice, made once and passed around (never module globals).

`--dtype auto`, per component (diffusion model / text encoder / VAE):

- GPU with bf16 (`bf16_native`: NVIDIA compute capability ≥ 8, i.e. RTX 30xx and newer, A100, H100;
  AMD CDNA (MI100 and newer) and RDNA3/4; Apple MPS on macOS ≥ 14): bf16 / bf16 / bf16.
- GPU without bf16 (RTX 20xx, GTX 16xx/10xx, T4, V100, P100; AMD RDNA2 and older, MI50; MPS before
  macOS 14): fp16-safe / bf16 (emulated; fp16 where bf16 cannot run at all: old MPS) / fp32.
- CPU: fp32 / fp32 / fp32.

fp16 for the diffusion model always means the fp16-safe path (`zturbo.models.zimage_fp16`: fp32
residual, scaled fp16 GEMMs): plain fp16 overflows Z-Image's activations (black images), and fp32
weights would double memory and halve speed on exactly the small cards. The text encoder runs once
per prompt, so emulated bf16 (slower GEMMs, bf16's range: nothing can overflow) costs little there.
The VAE's convolutions have no bf16 kernels before Ampere and the Flux VAE overflows fp16, so it
decodes in fp32 there (84M parameters: 0.3 GB more). An explicit `--dtype bf16|fp16|fp32` sets the DiT
and the text encoder (fp16 → bf16 for the encoder, as above); the VAE follows it only where it
computes natively, else fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zturbo.errors import InputError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
# AMD architectures with bf16 matrix instructions: CDNA (MI100 gfx908, MI200 gfx90a, MI300 gfx94x,
# MI350 gfx95x) and RDNA3/4 (gfx11xx, gfx12xx). RDNA2 and older (gfx103x, gfx101x, gfx906, gfx900, gfx803)
# have none (ComfyUI's model_management lists the same).
ROCM_BF16_ARCHS = ("gfx908", "gfx90a", "gfx94", "gfx95", "gfx11", "gfx12")


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (fast GEMMs and convolutions), not by emulation.

    torch's own `is_bf16_supported()` answers True on pre-Ampere NVIDIA cards (emulated, ~half fp32's
    speed) and on every ROCm device, so the architecture is read here. A CUDA device that cannot be
    queried (no driver) counts as bf16-capable, the default before this check existed.
    """
    if device.type == "cpu":
        return False
    if device.type == "mps":
        mps = torch.backends.mps
        return bool(getattr(mps, "is_macos_or_newer", lambda *_: False)(14, 0))
    try:
        props = torch.cuda.get_device_properties(device)
    except (AssertionError, RuntimeError, ValueError):
        return True
    if torch.version.hip:
        return str(getattr(props, "gcnArchName", "")).startswith(ROCM_BF16_ARCHS)
    return props.major >= 8


def pick_device(name: str = "auto") -> torch.device:
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise InputError(f"device must be one of {', '.join(DEVICE_CHOICES)} (got {name!r})")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was asked for, but PyTorch sees no CUDA GPU (is the CUDA build of torch installed?)"
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for, but this PyTorch has no MPS support")
    return torch.device(name)


@dataclass(frozen=True)
class Placement:
    """Where each component runs and in which dtype."""

    device: torch.device
    dtype: str = "auto"  # user choice: auto | bf16 | fp16 | fp32
    # None: as the GPU says (`bf16_native`); False: act as a GPU without bf16 (benchmarks run a small
    # card's dtypes on a big one); True: as one with it.
    bf16: bool | None = None

    @classmethod
    def auto(cls) -> Placement:
        return cls(pick_device("auto"))

    @classmethod
    def create(cls, device: str = "auto", dtype: str = "auto", bf16: bool | None = None) -> Placement:
        if dtype not in DTYPE_CHOICES:
            raise InputError(f"dtype must be one of {', '.join(DTYPE_CHOICES)} (got {dtype!r})")
        return cls(pick_device(device), dtype, bf16)

    def bf16_native(self, device: torch.device) -> bool:
        if self.bf16 is None or device.type == "cpu":
            return bf16_native(device)
        return self.bf16

    def _default(self, device: torch.device) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if self.bf16_native(device) else torch.float16

    def dit_dtype(self, weight_dtype: str = "default") -> torch.dtype:
        """The DiT's weights and compute dtype; fp16 means the fp16-safe path (module docstring)."""
        return self._default(self.device)

    @property
    def fp16_dit(self) -> bool:
        """Whether the DiT runs the fp16-safe path (fp32 residual: the memory planner counts it)."""
        return self.dit_dtype() == torch.float16

    def text_encoder_dtype(self, device: torch.device) -> torch.dtype:
        dtype = self._default(device)
        if dtype == torch.float16 and (device.type != "mps" or self.bf16_native(device)):
            return torch.bfloat16  # bf16 runs (emulated where not native) everywhere but old MPS
        return dtype

    def vae_dtype(self) -> torch.dtype:
        dtype = self._default(self.device)
        if dtype != torch.float32 and not (self.device.type == "cpu" or self.bf16_native(self.device)):
            return torch.float32  # no bf16 convolutions here, and the Flux VAE overflows fp16
        return torch.bfloat16 if dtype == torch.float16 else dtype

    def describe(self) -> str:
        """One line for the log: the three dtypes, and what they mean on this device."""
        dit = self.dit_dtype()
        name = "fp16-safe (fp32 residual)" if dit == torch.float16 else str(dit).removeprefix("torch.")
        te = str(self.text_encoder_dtype(self.device)).removeprefix("torch.")
        vae = str(self.vae_dtype()).removeprefix("torch.")
        native = "" if self.device.type == "cpu" else f"; bf16 native: {self.bf16_native(self.device)}"
        return f"{self.device}: diffusion model {name}, text encoder {te}, VAE {vae}{native}"

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
