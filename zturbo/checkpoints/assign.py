"""Build models without memory and fill them from a state dict by assignment.

A model built normally allocates (and randomly initialises) every weight before the real ones are
copied in: two copies of a 6B model do not fit a 24 GiB machine. Here parameters are created on the
`meta` device (no storage), buffers stay real (e.g. rotary tables that are computed, not stored), and
the file's tensors are assigned in place — memory-mapped on CPU, or streamed one at a time to the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from zturbo.errors import ModelFileError

M = TypeVar("M", bound=nn.Module)


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_empty(factory: Callable[[], M]) -> M:
    """Run `factory` with parameters created on the meta device (buffers stay real)."""
    with _parameters_on_meta(), torch.no_grad():
        model = factory()
    return model.eval().requires_grad_(False)


def _cast(value: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    if dtype is not None and value.is_floating_point() and value.dtype != dtype:
        return value.to(device=device, dtype=dtype)
    return value.to(device=device)


def check_keys(model: nn.Module, state_dict: dict[str, object], source: Path | str) -> None:
    """Every key of the file must be used and every weight of the model provided."""
    expected = set(model.state_dict().keys())
    given = set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:4])})")
        raise ModelFileError(
            source,
            "does not match the model it looks like: " + "; ".join(parts) + ". The file may be incomplete "
            "or a different variant.",
        )


def assign_state_dict(
    model: nn.Module,
    state_dict: dict[str, object],
    *,
    dtype: torch.dtype | None,
    device: torch.device | str,
    source: Path | str,
    use_scaled_mm: bool = False,
) -> None:
    """Assign `state_dict` into a meta-built model, converting dtype/device one tensor at a time.

    Quantized weights (GGUF blocks, fp8 with scales) move to `device` in their small form and are
    handed to the quantization runtime, which swaps the affected Linear layers (and expands the few
    quantized tensors no Linear takes, such as a GGUF token embedding, on `device`, never on the host);
    plain tensors are assigned. Buffers are moved to `device`. `use_scaled_mm` lets fp8 Linears use the
    fp8 matmul (UNETLoader's `fp8_e4m3fn_fast`).
    """
    check_keys(model, state_dict, source)
    device = torch.device(device)
    if any(not isinstance(v, torch.Tensor) for v in state_dict.values()):
        from zturbo.quant.linear import load_state_dict_with_quant

        moved = {
            k: _cast(v, dtype, device) if isinstance(v, torch.Tensor) else v.to(device)  # type: ignore[attr-defined]
            for k, v in state_dict.items()
        }
        load_state_dict_with_quant(
            model, moved, compute_dtype=dtype or torch.bfloat16, use_scaled_mm=use_scaled_mm, source=source
        )
    else:
        plain = {k: _cast(v, dtype, device) for k, v in state_dict.items()}  # type: ignore[arg-type]
        model.load_state_dict(plain, strict=True, assign=True)
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)
