"""Which weights a quantized Z-Image DiT stores quantized (the published files' rule, also fp8 on load)."""

from __future__ import annotations

import re

_DIT_QUANTIZED = re.compile(r"^layers\.\d+\..+\.weight$")


def dit_tensor_is_quantized(name: str, shape: tuple[int, ...]) -> bool:
    """True for the tensors published DiT GGUFs quantize: 2-D weights of the main blocks (`layers.N.`).

    The same rule decides which weights `--weight-dtype fp8` quantizes on load (names are identical in
    the original and diffusers layouts for these tensors).
    """
    return len(shape) == 2 and _DIT_QUANTIZED.match(name) is not None
