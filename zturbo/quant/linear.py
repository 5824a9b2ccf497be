"""Computing with quantized weights: `QuantLinear`, fp8 quantization on load, and the loader's entry point.

Weights stay in their stored form (GGUF blocks or fp8 + scale) and are expanded to the compute dtype
inside `forward`, on the input's device: VRAM holds ~4-8 bits a weight plus one layer's expanded copy,
and streaming a layer to the GPU moves the small form. fp8 weights can instead feed row-wise scaled
`torch._scaled_mm` (Ada/Hopper and newer) when asked to; dequantize-then-matmul stays the default because
it is exact with respect to the stored weights, and the fp8 matmul also quantizes the activations.

Expansion speed: the dequantizers are plain torch, a dozen small kernels each when run eagerly, which
made a Q4_0 DiT step 70% slower than bf16 on an H100. On CUDA, `QuantLinear` therefore expands through a
`torch.compile`d dequantizer (one fused kernel; bit-exact with eager, measured per type): one compiled
callable per stored type, created on first use, shapes specialised by torch's guards. Inside an outer
`torch.compile` region (the DiT's compiled blocks) the plain function is traced instead, so the outer
graph fuses it with its neighbours. CPU and MPS stay eager (no C++ compiler or Triton assumed).
`ZTURBO_EAGER_DEQUANT=1` forces eager everywhere (A/B benchmarks); a type whose compilation fails
warns once and stays eager for the rest of the process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES
from torch import Tensor, nn

from zturbo.errors import ModelFileError
from zturbo.quant.fp8 import Fp8Weight, dequantize_fp8, fp8_scaled_linear
from zturbo.quant.gguf import GGUFWeight, dequantize_raw

log = logging.getLogger(__name__)

QuantWeight = GGUFWeight | Fp8Weight
_LOAD_CHUNK_ELEMENTS = 1 << 24  # bounds the float32 temporary when dequantizing at load (64 MB)
EAGER_ENV = "ZTURBO_EAGER_DEQUANT"
FP8_KEY = "fp8"  # dequantizer cache key of fp8 weights (GGUF ones are keyed by their qtype)

# ---------------------------------------------------------------- on-the-fly expansion

Expander = Callable[..., Tensor]
_COMPILED: dict[object, Expander] = {}  # per stored type, created lazily (process-wide, like torch's caches)
_BROKEN: set[object] = set()  # types whose compilation failed once: eager from then on
_GGUF_EAGER: dict[object, Expander] = {}  # per GGUF type: the plain function the compiled one wraps
_CAPABILITY: dict[int, tuple[int, int]] = {}  # CUDA device index -> compute capability, asked once
# A DiT has ~10 weight shapes per stored type (more once Q‖K‖V and W1‖W3 are fused); torch's default
# limit of 8 graphs per function would quietly send the rest to eager.
DEQUANT_RECOMPILE_LIMIT = 64


def _gguf_eager(qtype: object) -> Expander:
    """`(data, shape, dtype) -> weight` for one GGUF type, with its own code object.

    torch.compile keeps its compiled graphs (and counts recompilations against a small limit) per code
    object; a closure shared by all types would make a Q4_K_M file's several types and a DiT's ~8 weight
    shapes compete for one limit. `code.replace` gives every type its own entry.
    """

    def expand(data: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        return dequantize_raw(data, qtype, shape, dtype)  # type: ignore[arg-type]

    name = f"dequantize_{getattr(qtype, 'name', qtype)}"
    expand.__code__ = expand.__code__.replace(co_name=name)
    expand.__name__ = expand.__qualname__ = name
    return expand


def _fp8_eager(data: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    return dequantize_fp8(data, scale, dtype)


def _compile(fn: Expander) -> Expander:
    """The one place that calls torch.compile (tests replace it to simulate a failing compiler)."""
    return torch.compile(fn, dynamic=False, fullgraph=True)


def _eager_forced() -> bool:
    return os.environ.get(EAGER_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _wants_compiled(device: torch.device) -> bool:
    """Compiled expansion only for tensors on CUDA, outside any outer compile region, unless forced off.

    Under an outer `torch.compile` (the DiT's compiled blocks) the plain function is what must run: it
    is traced into the outer graph and fused there. `is_compiling` is asked first, so tracing sees none
    of the process-wide state below.
    """
    return not (torch.compiler.is_compiling() or device.type != "cuda" or _eager_forced())


def expand_gguf(data: Tensor, qtype: object, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """GGUF blocks -> `dtype` weight of `shape`; compiled on CUDA (see the module docstring)."""
    if not _wants_compiled(data.device):
        return dequantize_raw(data, qtype, shape, dtype)  # type: ignore[arg-type]
    eager = _GGUF_EAGER.get(qtype)
    if eager is None:
        eager = _GGUF_EAGER[qtype] = _gguf_eager(qtype)
    return _run_compiled(qtype, eager, data, shape, dtype)


def expand_fp8(data: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """fp8 values times their fp32 scale -> `dtype`; compiled on CUDA (see the module docstring)."""
    scale = _to(scale, data.device)
    if not _wants_compiled(data.device):
        return dequantize_fp8(data, scale, dtype)
    return _run_compiled(FP8_KEY, _fp8_eager, data, scale, dtype)


def _run_compiled(key: object, eager: Expander, *args: object) -> Tensor:
    """`eager(*args)` through its compiled version, created at the first call for `key`.

    Compilation happens lazily at that first call, so failures (no Triton, an unsupported op) surface
    here: the type is marked broken, one warning is logged, and eager takes over for good. CUDA
    out-of-memory errors propagate untouched: the engine's memory plan reacts to them. A CUDA graph
    capture is no place for a first compilation (it launches and benchmarks kernels): there a type not
    compiled yet runs eagerly (captures follow warm-up calls, which compile it).
    """
    compiled = _COMPILED.get(key)
    if key in _BROKEN or (compiled is None and _capturing()):
        return eager(*args)
    if compiled is None:
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, DEQUANT_RECOMPILE_LIMIT)
        compiled = _COMPILED[key] = _compile(eager)
    try:
        return compiled(*args)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # any compiler failure means "use eager"
        _BROKEN.add(key)
        _COMPILED.pop(key, None)
        name = getattr(key, "name", key)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        log.warning(
            "compiling the %s dequantizer failed, so %s weights expand eagerly from now on (%s: %s)",
            name,
            name,
            type(exc).__name__,
            detail,
        )
        return eager(*args)


def expands_compiled(device: torch.device) -> bool:
    """Whether weights expanded on `device` go through compiled dequantizers (the memory planner sizes
    the expansion's temporaries by it): CUDA, not forced eager, and no type's compilation has failed."""
    return _wants_compiled(device) and not _BROKEN


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def reset_dequantizers() -> None:
    """Forget compiled dequantizers and failures (tests; a process that installed Triton meanwhile)."""
    _COMPILED.clear()
    _BROKEN.clear()


def _capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of a CUDA device, asked of the driver once per device (not per layer call)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return _CAPABILITY[index]


# ---------------------------------------------------------------- the layer


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
            return expand_gguf(data, self.qtype, self.weight_shape, self.compute_dtype)
        return expand_fp8(data.view(self.fp8_dtype), self.scale.view(torch.float32), self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        bias = self.bias
        if bias is not None:
            bias = _to(bias, x.device)
            if bias.dtype != self.compute_dtype:
                bias = bias.to(self.compute_dtype)
        if self._scaled_mm_applies(x):
            weight = _to(self.qweight, x.device).view(self.fp8_dtype)
            scale = _to(self.scale, x.device).view(torch.float32)
            input_scale = (
                None if self.input_scale is None else _to(self.input_scale, x.device).view(torch.float32)
            )
            return fp8_scaled_linear(x, weight, scale, bias, input_scale)
        return F.linear(x, self.dequantize_weight(x.device), bias)

    def _scaled_mm_applies(self, x: Tensor) -> bool:
        """Whether the fp8 matmul may run; the device's capability is looked up once, not per call."""
        return (
            self.use_scaled_mm
            and not self.full_precision_mm
            and self.fp8_dtype == torch.float8_e4m3fn
            and self.compute_dtype == torch.bfloat16
            and x.is_cuda
            and self.in_features % 16 == 0
            and self.out_features % 16 == 0
            and _capability(x.device) >= (8, 9)
        )

    def extra_repr(self) -> str:
        kind = self.qtype.name if self.qtype is not None else str(self.fp8_dtype).removeprefix("torch.")
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={kind}"

    @classmethod
    def concatenated(cls, parts: Sequence[QuantLinear]) -> QuantLinear | None:
        """One layer computing `torch.cat([p(x) for p in parts], -1)` in one GEMM, or None if impossible.

        Q‖K‖V and W1‖W3 of a quantized block then cost one expansion and one matmul instead of three
        or two. Weight rows are stacked in their stored form: GGUF blocks run along rows, so each part's
        bytes are `(rows, bytes per row)` and stack as they are; fp8 values stack with their scales (a
        per-tensor scale becomes that part's rows of a per-row vector, which multiplies identically).
        None when the parts differ in anything their outputs depend on (stored type, fp8 format,
        compute dtype, input width, matmul path, bias presence or dtype, static input scale, device) or
        when a part's rows are not whole blocks. The parts are left untouched (the caller drops them);
        the result holds a copy of their bytes.
        """
        parts = list(parts)
        if not parts or not all(isinstance(p, QuantLinear) for p in parts):
            return None
        if not _stackable(parts):
            return None
        first = parts[0]
        out_features = sum(p.out_features for p in parts)
        shape = torch.Size((out_features, first.in_features))
        biases = [p.bias for p in parts]
        bias = None if biases[0] is None else torch.cat(biases)  # type: ignore[arg-type]
        weight: QuantWeight
        if first.qtype is not None:
            rows = [p.qweight.reshape(p.out_features, -1) for p in parts]
            weight = GGUFWeight(torch.cat(rows), first.qtype, shape)
        else:
            data = torch.cat([p.qweight.reshape(p.out_features, -1) for p in parts])
            scales = [_row_scales(p) for p in parts]
            input_scale = None if first.input_scale is None else first.input_scale.view(torch.float32)
            weight = Fp8Weight(
                data.view(first.fp8_dtype), torch.cat(scales), input_scale, first.full_precision_mm
            )
        return cls(weight, bias, compute_dtype=first.compute_dtype, use_scaled_mm=first.use_scaled_mm)


def _stackable(parts: list[QuantLinear]) -> bool:
    """Whether the parts' rows can be stacked into one layer with the same outputs (see `concatenated`)."""
    first = parts[0]

    def same(attribute: Callable[[QuantLinear], object]) -> bool:
        return all(attribute(p) == attribute(first) for p in parts)

    settings = (
        lambda p: p.qtype,
        lambda p: p.fp8_dtype,
        lambda p: p.compute_dtype,
        lambda p: p.in_features,
        lambda p: p.use_scaled_mm,
        lambda p: p.full_precision_mm,
        lambda p: p.qweight.device,
        lambda p: p.bias is None,
        lambda p: None if p.bias is None else (p.bias.dtype, p.bias.device),
        lambda p: p.input_scale is None,
    )
    if not all(same(attribute) for attribute in settings):
        return False
    if first.qtype is not None:
        block_size, type_size = GGML_QUANT_SIZES[first.qtype]
        if first.in_features % block_size:
            return False  # a block would straddle two rows: rows are not byte-separable
        row_bytes = first.in_features // block_size * type_size
        if any(p.qweight.numel() != p.out_features * row_bytes for p in parts):
            return False
    if first.input_scale is not None:
        values = [p.input_scale.view(torch.float32).reshape(()) for p in parts]  # type: ignore[union-attr]
        if any(v.device != values[0].device or not torch.equal(v, values[0]) for v in values):
            return False  # one static activation scale per GEMM: only identical ones can be shared
    return True


def _row_scales(part: QuantLinear) -> Tensor:
    """A part's fp32 scale as one value per output row, `(out_features, 1)`."""
    scale = part.scale.view(torch.float32)  # type: ignore[union-attr]
    if scale.numel() == 1:
        return scale.reshape(1, 1).expand(part.out_features, 1)
    return scale.reshape(part.out_features, 1)


def _to(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`, without a call when it is there already (this runs per layer per step).

    Host-to-GPU copies may overlap compute; copies toward the CPU must not (the data is read at once).
    """
    if t.device == device:
        return t
    return t.to(device, non_blocking=device.type == "cuda")


def _as_int(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.view(torch.int32)


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
