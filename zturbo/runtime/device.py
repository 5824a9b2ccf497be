"""Device and dtype choice, made once and passed around (never module globals).

Defaults: CUDA with bf16 weights; Apple MPS with bf16; CPU with fp32 (bf16 allowed). fp16 is refused for
the diffusion model: Z-Image's activations overflow fp16 and produce black images (ComfyUI guards the
same way), so we say so instead of silently producing NaNs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zturbo.errors import InputError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


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

    @classmethod
    def auto(cls) -> Placement:
        return cls(pick_device("auto"))

    @classmethod
    def create(cls, device: str = "auto", dtype: str = "auto") -> Placement:
        if dtype not in DTYPE_CHOICES:
            raise InputError(f"dtype must be one of {', '.join(DTYPE_CHOICES)} (got {dtype!r})")
        return cls(pick_device(device), dtype)

    def _default(self, device: torch.device) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        return torch.float32 if device.type == "cpu" else torch.bfloat16

    def dit_dtype(self, weight_dtype: str = "default") -> torch.dtype:
        dtype = self._default(self.device)
        if dtype == torch.float16:
            raise InputError(
                "fp16 is not supported for the Z-Image diffusion model: its activations overflow fp16 and the "
                "images come out black. Use --dtype bf16 (or fp32 on GPUs without bf16)."
            )
        return dtype

    def text_encoder_dtype(self, device: torch.device) -> torch.dtype:
        dtype = self._default(device)
        return torch.bfloat16 if dtype == torch.float16 else dtype

    def vae_dtype(self) -> torch.dtype:
        return self._default(self.device)

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
