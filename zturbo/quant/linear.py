"""Computing with quantized weights: `QuantLinear`, its dequantizer dispatch, and the loader's entry point.

`QuantLinear` is generic over `zturbo.quant.weight.QuantWeight`: it keeps a weight's stored tensors as
buffers and its static fields as attributes, rebuilds the weight object (views, no copies) on the input's
device at every call, and either expands it to the compute dtype and runs `F.linear`, or, when asked
(`use_scaled_mm`) and the format has one that applies, runs the format's own matmul on the stored form
(fp8 `_scaled_mm` on Ada/Hopper, int8 `_int_mm`). VRAM holds the stored form plus one layer's expanded
copy, and streaming a layer to the GPU moves the small form. Dequantize-then-matmul stays the default
because it is exact with respect to the stored weights; the native matmuls also quantize activations.

Expansion speed: the dequantizers are plain torch, a dozen small kernels each when run eagerly, which
made a Q4_0 DiT step 70% slower than bf16 on an H100. On CUDA, `QuantLinear` therefore expands through a
`torch.compile`d dequantizer (one fused kernel; bit-exact with eager, measured per type): one compiled
callable per `expand_key` (a GGUF type, "fp8", "int8", ...), created on first use, shapes and static
fields specialised by torch's guards. Inside an outer `torch.compile` region (the DiT's compiled blocks)
the plain function is traced instead, so the outer graph fuses it with its neighbours. CPU and MPS stay
eager (no C++ compiler or Triton assumed). `ZTURBO_EAGER_DEQUANT=1` forces eager everywhere (A/B
benchmarks); a type whose compilation fails warns once and stays eager for the rest of the process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zturbo.errors import ModelFileError
from zturbo.quant.fp8 import FP8_KEY
from zturbo.quant.weight import QuantWeight, cuda_capability

__all__ = ["FP8_KEY", "QuantLinear", "QuantWeight", "expand_weight", "load_state_dict_with_quant"]

log = logging.getLogger(__name__)

_LOAD_CHUNK_ELEMENTS = 1 << 24  # bounds the float32 temporary when dequantizing at load (64 MB)
EAGER_ENV = "ZTURBO_EAGER_DEQUANT"

# ---------------------------------------------------------------- on-the-fly expansion

Expander = Callable[..., Tensor]
_COMPILED: dict[Hashable, Expander] = {}  # per expand_key, created lazily (process-wide, like torch's caches)
_BROKEN: set[Hashable] = set()  # keys whose compilation failed once: eager from then on
_EAGER: dict[Hashable, Expander] = {}  # per expand_key: the plain function the compiled one wraps
# A DiT has ~10 weight shapes per stored type (more once Q‖K‖V and W1‖W3 are fused); torch's default
# limit of 8 graphs per function would quietly send the rest to eager.
DEQUANT_RECOMPILE_LIMIT = 64


def key_name(key: Hashable) -> str:
    """A dequantizer key as a name: a GGUF type's name, or the key's text."""
    return str(getattr(key, "name", key))


def _eager_expander(weight_type: type[QuantWeight], key: Hashable) -> Expander:
    """`(*fields, dtype) -> weight` for one key, rebuilding the weight from its fields, with its own code.

    torch.compile keeps its compiled graphs (and counts recompilations against a small limit) per code
    object; a closure shared by all keys would make a Q4_K_M file's several types and a DiT's ~8 weight
    shapes compete for one limit. `code.replace` gives every key its own entry.
    """
    names = (*weight_type.tensor_fields(), *weight_type.static_fields())

    def expand(*args: object) -> Tensor:
        *values, dtype = args
        return weight_type.trusted(dict(zip(names, values, strict=True))).expand(dtype)  # type: ignore[arg-type]

    name = f"dequantize_{key_name(key)}"
    expand.__code__ = expand.__code__.replace(co_name=name)
    expand.__name__ = expand.__qualname__ = name
    return expand


def expand_weight(weight: QuantWeight, dtype: torch.dtype) -> Tensor:
    """A weight in `dtype` on its device; compiled on CUDA (see the module docstring)."""
    if not _wants_compiled(weight.device):
        return weight.expand(dtype)
    key = weight.expand_key
    eager = _EAGER.get(key)
    if eager is None:
        eager = _EAGER[key] = _eager_expander(type(weight), key)
    fields = (*weight.tensor_fields(), *weight.static_fields())
    return _run_compiled(key, eager, *(getattr(weight, f) for f in fields), dtype)


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


def _run_compiled(key: Hashable, eager: Expander, *args: object) -> Tensor:
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
        name = key_name(key)
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
    """Compute capability of a CUDA device (`zturbo.quant.weight.cuda_capability`, asked once per device)."""
    return cuda_capability(device)


# ---------------------------------------------------------------- the layer


class QuantLinear(nn.Module):
    """A Linear whose weight is any `QuantWeight`, expanded to `compute_dtype` on every call.

    The stored tensors are non-persistent buffers (`qweight` for the packed values, the other tensors
    under their field names, floating ones viewed as integers of the same width so `module.to(dtype)`
    leaves them alone): `.to()` moves them and `named_buffers()` counts them, but `state_dict()` leaves
    them out, because the checkpoint file, not the module, is their serial form. `use_scaled_mm` lets the
    format's native matmul run where it applies (`QuantWeight.native_linear_applies`).
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
        self.weight_type = type(weight)
        self.weight_static = weight.static()
        self.label = weight.label
        # (field, buffer, stored dtype) per tensor: what `quantized` needs at every call, looked up once.
        self._stored_fields = tuple(
            (name, _buffer_name(name), dtype) for name, dtype in weight.stored_dtypes().items()
        )
        for name, tensor in weight.stored().items():
            self.register_buffer(_buffer_name(name), tensor, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    @property
    def weight(self) -> Tensor:
        """The expanded weight, for code that inspects `.weight` (diffusers reads `.weight.dtype`)."""
        return self.dequantize_weight()

    def quantized(self, device: torch.device | None = None) -> QuantWeight:
        """The weight in its stored form (views of the buffers), on `device` (default: where it is)."""
        fields = dict(self.weight_static)
        for name, buffer, dtype in self._stored_fields:
            tensor = self._buffers[buffer]
            if tensor is not None:
                if device is not None:
                    tensor = _to(tensor, device)
                if tensor.dtype != dtype:
                    tensor = tensor.view(dtype)
            fields[name] = tensor
        return self.weight_type.trusted(fields)

    def dequantize_weight(self, device: torch.device | None = None) -> Tensor:
        """Expand on `device` (default: where the bytes are); only the small form is copied there."""
        return expand_weight(self.quantized(device), self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        bias = self.bias
        if bias is not None:
            bias = _to(bias, x.device)
            if bias.dtype != self.compute_dtype:
                bias = bias.to(self.compute_dtype)
        weight = self.quantized(x.device)
        if self.use_scaled_mm and weight.native_linear_applies(x, self.compute_dtype):
            return weight.native_linear(x, bias)
        return F.linear(x, expand_weight(weight, self.compute_dtype), bias)

    def _native_mm_applies(self, x: Tensor) -> bool:
        """Whether the format's own matmul would run for `x` (the device's capability is asked once)."""
        return self.use_scaled_mm and self.quantized(x.device).native_linear_applies(x, self.compute_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.label}"

    @classmethod
    def concatenated(cls, parts: Sequence[QuantLinear]) -> QuantLinear | None:
        """One layer computing `torch.cat([p(x) for p in parts], -1)` in one GEMM, or None if impossible.

        Q‖K‖V and W1‖W3 of a quantized block then cost one expansion and one matmul instead of three
        or two. Weight rows are stacked in their stored form (`QuantWeight.stack`: GGUF byte rows, fp8
        values with their scales, a per-tensor scale becoming that part's rows of a per-row vector, which
        multiplies identically). None when the parts differ in anything their outputs depend on (stored
        type or static settings, compute dtype, input width, matmul path, bias presence or dtype, a
        shared activation-side tensor, device) or when a part's rows are not separable. The parts are
        left untouched (the caller drops them); the result holds a copy of their bytes.
        """
        parts = list(parts)
        if not parts or not all(isinstance(p, QuantLinear) for p in parts):
            return None
        first = parts[0]
        if any(
            p.compute_dtype != first.compute_dtype or p.use_scaled_mm != first.use_scaled_mm for p in parts
        ):
            return None
        biases = [p.bias for p in parts]
        if any((b is None) != (biases[0] is None) for b in biases):
            return None
        if biases[0] is not None and len({(b.dtype, b.device) for b in biases}) != 1:
            return None
        weight = first.weight_type.stack([p.quantized() for p in parts])
        if weight is None:
            return None
        bias = None if biases[0] is None else torch.cat(biases)  # type: ignore[arg-type]
        return cls(weight, bias, compute_dtype=first.compute_dtype, use_scaled_mm=first.use_scaled_mm)


def _buffer_name(field: str) -> str:
    """The packed values are `qweight` (a `weight` attribute is the expanded weight); others keep their names."""
    return "qweight" if field == "data" else field


def _to(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`, without a call when it is there already (this runs per layer per step).

    Host-to-GPU copies may overlap compute; copies toward the CPU must not (the data is read at once).
    """
    if t.device == device:
        return t
    return t.to(device, non_blocking=device.type == "cuda")


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
    notes: dict[str, int] = {}
    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Linear) and isinstance(rest.get(f"{prefix}weight"), QuantWeight):
            weight = rest.pop(f"{prefix}weight")
            bias = _plain(rest.pop(f"{prefix}bias", None), compute_dtype)
            layer = QuantLinear(weight, bias, compute_dtype=compute_dtype, use_scaled_mm=use_scaled_mm)
            _replace_module(model, name, layer)
            note = weight.compute_note(use_scaled_mm)  # type: ignore[union-attr]
            if note:
                notes[note] = notes.get(note, 0) + 1
    for note, count in notes.items():
        log.info("%s: %d layer%s (%s)", note, count, "" if count == 1 else "s", source)
    plain = {k: _plain(v, compute_dtype) for k, v in rest.items()}
    model.load_state_dict(plain, strict=True, assign=True)


def _plain(value: Tensor | QuantWeight | None, dtype: torch.dtype) -> Tensor | None:
    if isinstance(value, QuantWeight):
        return _dequantize_rows_chunked(value, dtype)
    return value


def _dequantize_rows_chunked(weight: QuantWeight, dtype: torch.dtype) -> Tensor:
    """Dequantize a few rows at a time so a 150k-row embedding needs no 1.5 GB float32 temporary."""
    if len(weight.shape) < 2 or not weight.can_split_rows():
        return weight.dequantize(dtype)
    rows = weight.shape[0]
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    step = max(1, _LOAD_CHUNK_ELEMENTS // max(1, weight.shape[1:].numel()))
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        out[start:stop] = weight.rows(start, stop).dequantize(dtype)
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
