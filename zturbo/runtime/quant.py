"""Computing with quantized weights: `QuantLinear`, fp8 quantization on load, and the loader's entry point.

Weights stay in their stored form (GGUF blocks or fp8 + scale) and are expanded to the compute dtype
inside `forward`, on the input's device: VRAM holds ~4-8 bits a weight plus one layer's expanded copy,
and streaming a layer to the GPU moves the small form. The expansion is plain torch, so
`torch.compile` fuses it into one kernel. fp8 weights can instead feed row-wise scaled `torch._scaled_mm`
(Ada/Hopper and newer) when asked to; dequantize-then-matmul stays the default because it is exact
with respect to the stored weights, and the fp8 matmul also quantizes the activations.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zturbo.checkpoints.fp8 import Fp8Weight, dequantize_fp8
from zturbo.checkpoints.gguf import GGUFWeight, dequantize_raw
from zturbo.errors import ModelFileError

QuantWeight = GGUFWeight | Fp8Weight
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
_LOAD_CHUNK_ELEMENTS = 1 << 24  # bounds the float32 temporary when dequantizing at load (64 MB)


class QuantLinear(nn.Module):
    """A Linear whose weight is a GGUFWeight or Fp8Weight, expanded to `compute_dtype` on every call.

    The stored bytes are non-persistent buffers: `.to()` moves them and `named_buffers()` counts them,
    but `state_dict()` leaves them out, because the checkpoint file, not the module, is their serial form.
    """

    def __init__(
        self,
        weight: QuantWeight,
        bias: Tensor | None = None,
        *,
        compute_dtype: torch.dtype = torch.bfloat16,
        use_scaled_mm: bool = False,
    ) -> None:
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"QuantLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.weight_shape = torch.Size(weight.shape)
        self.compute_dtype = compute_dtype
        self.use_scaled_mm = use_scaled_mm
        self.qtype = weight.qtype if isinstance(weight, GGUFWeight) else None
        self.fp8_dtype = weight.data.dtype if isinstance(weight, Fp8Weight) else None
        self.full_precision_mm = isinstance(weight, Fp8Weight) and weight.full_precision_mm
        # Stored as integer views: `model.to(torch.bfloat16)` casts floating buffers (fp8 counts as
        # floating), which would double the weight's size and round the fp32 scales.
        self.register_buffer("qweight", weight.data.view(torch.uint8), persistent=False)
        self.register_buffer("scale", _as_int(getattr(weight, "scale", None)), persistent=False)
        self.register_buffer("input_scale", _as_int(getattr(weight, "input_scale", None)), persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    @property
    def weight(self) -> Tensor:
        """The expanded weight, for code that inspects `.weight` (diffusers reads `.weight.dtype`)."""
        return self.dequantize_weight()

    def dequantize_weight(self, device: torch.device | None = None) -> Tensor:
        """Expand on `device` (default: where the bytes are); only the small form is copied there."""
        data = self.qweight if device is None else _to(self.qweight, device)
        if self.qtype is not None:
            return dequantize_raw(data, self.qtype, self.weight_shape, self.compute_dtype)
        return dequantize_fp8(data.view(self.fp8_dtype), self.scale.view(torch.float32), self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.compute_dtype)
        bias = None if self.bias is None else _to(self.bias, x.device).to(self.compute_dtype)
        if self._scaled_mm_applies(x):
            weight = _to(self.qweight, x.device).view(self.fp8_dtype)
            scale = _to(self.scale, x.device).view(torch.float32)
            input_scale = (
                None if self.input_scale is None else self.input_scale.to(x.device).view(torch.float32)
            )
            return fp8_scaled_linear(x, weight, scale, bias, input_scale)
        return F.linear(x, self.dequantize_weight(x.device), bias)

    def _scaled_mm_applies(self, x: Tensor) -> bool:
        return (
            self.use_scaled_mm
            and not self.full_precision_mm
            and self.fp8_dtype == torch.float8_e4m3fn
            and self.compute_dtype == torch.bfloat16
            and x.is_cuda
            and self.in_features % 16 == 0
            and self.out_features % 16 == 0
            and torch.cuda.get_device_capability(x.device) >= (8, 9)
        )

    def extra_repr(self) -> str:
        kind = self.qtype.name if self.qtype is not None else str(self.fp8_dtype).removeprefix("torch.")
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={kind}"


def _to(t: Tensor, device: torch.device) -> Tensor:
    """Host-to-GPU copies may overlap compute; copies toward the CPU must not (the data is read at once)."""
    return t.to(device, non_blocking=device.type == "cuda")


def _as_int(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.view(torch.int32)


def fp8_scaled_linear(
    x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None, input_scale: Tensor | None = None
) -> Tensor:
    """Row-wise scaled fp8 matmul: activations quantized per row (or with the file's static scale)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if input_scale is None:
        x_scale = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    else:
        x_scale = input_scale.float().reshape(1, 1).expand(x2.shape[0], 1).contiguous()
    xq = (x2.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    w_scale = weight_scale.float().reshape(-1, 1).expand(weight.shape[0], 1).reshape(1, -1).contiguous()
    out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=x.dtype)
    return out.reshape(*shape[:-1], weight.shape[0])


def quantize_to_fp8(
    weight: Tensor, *, per_row: bool = True, dtype: torch.dtype = torch.float8_e4m3fn
) -> Fp8Weight:
    """fp8 with amax scaling; per-row scales (the default) keep small rows precise and suit `_scaled_mm`.

    `dtype` is e4m3 (3 mantissa bits, the default) or e5m2 (UNETLoader's `fp8_e5m2`: more range, less
    precision); either way the scale maps each row's largest magnitude onto the format's maximum.
    """
    fp8_max = torch.finfo(dtype).max
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().amax()
    scale = amax.clamp(min=1e-12) / fp8_max
    data = (w / scale).clamp(-fp8_max, fp8_max).to(dtype)
    return Fp8Weight(data, scale)


def load_state_dict_with_quant(
    model: nn.Module,
    state_dict: dict[str, Tensor | QuantWeight],
    *,
    compute_dtype: torch.dtype,
    use_scaled_mm: bool = False,
    source: str | Path = "state dict",
) -> None:
    """Load into a model built on `meta`: quantized Linear weights become `QuantLinear`s, the rest is assigned.

    Keys and shapes are checked before anything changes (strict, like `load_state_dict(strict=True)`,
    naming a few offenders). Quantized tensors that no Linear takes (embeddings, norms, pad tokens)
    are dequantized to `compute_dtype` here. Non-persistent buffers (e.g. rotary `inv_freq`) are not in
    any state dict and stay on `meta`: the caller recomputes them.
    """
    _check_keys_and_shapes(model, state_dict, source)
    rest = dict(state_dict)
    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Linear) and isinstance(rest.get(f"{prefix}weight"), QuantWeight):
            weight = rest.pop(f"{prefix}weight")
            bias = _plain(rest.pop(f"{prefix}bias", None), compute_dtype)
            layer = QuantLinear(weight, bias, compute_dtype=compute_dtype, use_scaled_mm=use_scaled_mm)
            _replace_module(model, name, layer)
    plain = {k: _plain(v, compute_dtype) for k, v in rest.items()}
    model.load_state_dict(plain, strict=True, assign=True)


def _plain(value: Tensor | QuantWeight | None, dtype: torch.dtype) -> Tensor | None:
    if isinstance(value, Fp8Weight):
        return value.dequantize(dtype)
    if isinstance(value, GGUFWeight):
        return _dequantize_rows_chunked(value, dtype)
    return value


def _dequantize_rows_chunked(weight: GGUFWeight, dtype: torch.dtype) -> Tensor:
    """Dequantize a few rows at a time so a 150k-row embedding needs no 1.5 GB float32 temporary."""
    if len(weight.shape) < 2 or weight.data.ndim < 2 or weight.data.shape[0] != weight.shape[0]:
        return weight.dequantize(dtype)
    rows = weight.shape[0]
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    step = max(1, _LOAD_CHUNK_ELEMENTS // max(1, weight.shape[1:].numel()))
    for start in range(0, rows, step):
        part = weight.data[start : start + step]
        out[start : start + step] = dequantize_raw(part, weight.qtype, out[start : start + step].shape, dtype)
    return out


def _check_keys_and_shapes(model: nn.Module, state_dict: dict, source: str | Path) -> None:
    expected = {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (model wants {tuple(expected[k])})"
        for k in sorted(expected.keys() & state_dict.keys())
        if tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong),
        )
        if keys
    ]
    if problems:
        raise ModelFileError(source, "weights do not fit the model: " + "; ".join(problems))


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise ValueError("load_state_dict_with_quant cannot replace the root module; wrap it")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
