"""Which dequantizer `QuantLinear` runs: compiled on CUDA, eager elsewhere, eager when forced or broken.

The compiled path itself needs CUDA (GPU tests at the end); on CPU the dispatch is checked by standing in
for `torch.compile` with a spy, so the choice, the per-type cache, the one-warning fallback and the
unchanged results are all exercised without a GPU.
"""

from __future__ import annotations

import logging

import gguf
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.fp8 import split_quantized_state_dict
from zturbo.quant import linear as quant
from zturbo.quant import weight as weight_module
from zturbo.quant.fp8 import quantize_to_fp8
from zturbo.quant.gguf import DEQUANTIZERS, GGUFWeight
from zturbo.quant.gguf_quantize import quantize as torch_quantize
from zturbo.quant.linear import EAGER_ENV, FP8_KEY, QuantLinear
from zturbo.quant.weight import QuantWeight
from zturbo.testing.synthetic_quant import comfy_quant_layer


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gguf_weight(qtype: Q, out_features: int, in_features: int, seed: int = 0) -> GGUFWeight:
    w = torch.randn(out_features, in_features, generator=gen(seed))
    if qtype in (Q.Q4_K, Q.Q6_K):  # the gguf package has no quantizer for these
        raw = torch_quantize(w, qtype)
    else:
        raw = torch.from_numpy(gguf.quants.quantize(w.numpy(), qtype))
    return GGUFWeight(raw, qtype, torch.Size((out_features, in_features)))


@pytest.fixture(autouse=True)
def fresh_dequantizers():
    quant.reset_dequantizers()
    yield
    quant.reset_dequantizers()


class CompileSpy:
    """Stands in for `torch.compile`: records what it was asked to compile; `fail` makes the result raise."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.compiled: list[str] = []
        self.calls = 0
        self.fail = fail

    def __call__(self, fn):
        self.compiled.append(fn.__name__)

        def run(*args):
            self.calls += 1
            if self.fail is not None:
                raise self.fail
            return fn(*args)

        return run


@pytest.fixture
def spy(monkeypatch) -> CompileSpy:
    spy = CompileSpy()
    monkeypatch.setattr(quant, "_compile", spy)
    return spy


def layer(kind: str, dtype: torch.dtype = torch.float32) -> QuantLinear:
    weight = quantize_to_fp8(torch.randn(32, 64, generator=gen(1))) if kind == "fp8" else None
    weight = weight or gguf_weight(Q[kind], 32, 64)
    return QuantLinear(weight, torch.randn(32, generator=gen(2)), compute_dtype=dtype)


X = torch.randn(3, 64, generator=gen(3))


def test_cpu_inputs_expand_eagerly(spy: CompileSpy) -> None:
    assert not quant._wants_compiled(torch.device("cpu"))
    assert not quant._wants_compiled(torch.device("mps"))
    for kind in ("Q8_0", "Q4_0", "fp8"):
        q = layer(kind)
        assert torch.equal(q(X), F.linear(X, q.dequantize_weight(), q.bias))
    assert spy.compiled == [] and spy.calls == 0


def test_cuda_wants_compiled_unless_forced_eager(monkeypatch) -> None:
    cuda = torch.device("cuda", 0)
    assert quant._wants_compiled(cuda)
    for value in ("1", "true", "yes"):
        monkeypatch.setenv(EAGER_ENV, value)
        assert not quant._wants_compiled(cuda)
    for value in ("0", ""):
        monkeypatch.setenv(EAGER_ENV, value)
        assert quant._wants_compiled(cuda)


def test_inside_an_outer_compile_the_plain_function_is_traced(monkeypatch) -> None:
    """The DiT's compiled blocks trace QuantLinear: a nested compiled callable would only get in the way."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not quant._wants_compiled(torch.device("cuda", 0))


def test_forward_traces_fullgraph_with_the_dispatch() -> None:
    q = layer("Q4_0")
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(X), q(X))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_path_is_cached_per_type_and_changes_nothing(monkeypatch, spy, dtype) -> None:
    layers = {kind: layer(kind, dtype) for kind in ("Q8_0", "Q4_0", "fp8")}
    expected = {kind: q(X) for kind, q in layers.items()}  # CPU: eager
    monkeypatch.setattr(quant, "_wants_compiled", lambda device: True)
    for _ in range(3):
        for kind, q in layers.items():
            assert torch.equal(q(X), expected[kind])
    assert layer("Q8_0", dtype)(X).shape == (3, 32)  # a second Q8_0 layer reuses the Q8_0 callable
    assert sorted(spy.compiled) == sorted(["dequantize_Q8_0", "dequantize_Q4_0", "dequantize_fp8"])
    assert spy.calls == 10
    assert set(quant._COMPILED) == {Q.Q8_0, Q.Q4_0, FP8_KEY}


def test_every_gguf_type_gets_its_own_code_object() -> None:
    """torch.compile caches (and limits recompilations) per code object: types must not share one."""
    codes = {quant._eager_expander(GGUFWeight, qtype).__code__ for qtype in DEQUANTIZERS}
    assert len(codes) == len(DEQUANTIZERS)


def test_a_failing_compiler_warns_once_and_stays_eager(monkeypatch, caplog) -> None:
    spy = CompileSpy(fail=RuntimeError("Cannot find a working triton installation"))
    monkeypatch.setattr(quant, "_compile", spy)
    q, other = layer("Q4_0"), layer("Q4_0")
    expected = q(X)
    monkeypatch.setattr(quant, "_wants_compiled", lambda device: True)
    with caplog.at_level(logging.WARNING, logger=quant.__name__):
        outputs = [q(X), q(X), other(X)]
        weight = other.weight
    assert torch.equal(outputs[0], expected) and torch.equal(outputs[1], expected)
    assert torch.equal(outputs[2], F.linear(X, weight, other.bias))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Q4_0" in warnings[0].getMessage()
    assert "triton" in warnings[0].getMessage()
    assert spy.compiled == ["dequantize_Q4_0"] and spy.calls == 1
    assert Q.Q4_0 in quant._BROKEN
    # Another type is unaffected: it still gets its compiled version.
    monkeypatch.setattr(quant, "_compile", CompileSpy())
    layer("Q8_0")(X)
    assert Q.Q8_0 in quant._COMPILED


def test_out_of_memory_in_the_compiled_path_is_not_a_compiler_failure(monkeypatch) -> None:
    monkeypatch.setattr(quant, "_compile", CompileSpy(fail=torch.cuda.OutOfMemoryError("CUDA out of memory")))
    monkeypatch.setattr(quant, "_wants_compiled", lambda device: True)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        layer("Q8_0")(X)
    assert Q.Q8_0 not in quant._BROKEN


def test_a_graph_capture_never_compiles_first(monkeypatch, spy) -> None:
    monkeypatch.setattr(quant, "_wants_compiled", lambda device: True)
    monkeypatch.setattr(quant, "_capturing", lambda: True)
    q = layer("Q8_0")
    q(X)
    assert spy.compiled == []  # not compiled yet: eager inside the capture
    monkeypatch.setattr(quant, "_capturing", lambda: False)
    q(X)
    monkeypatch.setattr(quant, "_capturing", lambda: True)
    q(X)
    assert spy.compiled == ["dequantize_Q8_0"] and spy.calls == 2  # compiled before: used in the capture


def test_device_capability_is_asked_once_per_device(monkeypatch) -> None:
    asked = []

    def capability(index):
        asked.append(index)
        return (9, 0)

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(weight_module, "_CAPABILITY", {})
    for _ in range(5):
        assert quant._capability(torch.device("cuda", 0)) == (9, 0)
    quant._capability(torch.device("cuda", 1))
    assert asked == [0, 1]


def test_tensors_already_on_the_device_are_not_moved() -> None:
    t = torch.zeros(3)
    assert quant._to(t, torch.device("cpu")) is t


# ---------------------------------------------------------------- CUDA


# Byte offsets of the fp16 fields (d, dmin) of the types no quantizer here writes: random bytes there
# could be inf/NaN, everything else may be random.
_F16_FIELDS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q5_K: (0, 2)}


def _blocks(qtype: Q, shape: tuple[int, int]) -> torch.Tensor:
    """Valid stored rows of `qtype`: quantized where a quantizer exists, else random with sane scales."""
    if qtype in (Q.F32, Q.F16, Q.BF16):
        dtype = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[qtype]
        return torch.randn(shape, generator=gen(4)).to(dtype).view(torch.uint8)
    if qtype not in _F16_FIELDS:
        return gguf_weight(qtype, *shape, seed=4).data.reshape(shape[0], -1)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = torch.randint(0, 256, (shape[0] * shape[1] // block_size, type_size), generator=gen(4))
    raw = raw.to(torch.uint8)
    for offset in _F16_FIELDS[qtype]:
        scales = (torch.randn(raw.shape[0], 1, generator=gen(offset)) * 0.01).half()
        raw[:, offset : offset + 2] = scales.view(torch.uint8)
    return raw.reshape(shape[0], -1)


def _cuda_weights() -> dict[str, QuantWeight]:
    """Every supported GGUF type, fp8 in both formats with per-row and per-tensor scales, and ComfyUI's
    int8 (plain and convrot), nvfp4 (plain and pre-scaled) and mxfp8 layouts, read by the reader."""
    shape = (96, 512)
    weights: dict[str, QuantWeight] = {
        qtype.name: GGUFWeight(_blocks(qtype, shape), qtype, torch.Size(shape)) for qtype in DEQUANTIZERS
    }
    w = torch.randn(shape, generator=gen(5))
    for fmt in (torch.float8_e4m3fn, torch.float8_e5m2):
        for per_row in (True, False):
            weights[f"{fmt}-{'row' if per_row else 'tensor'}"] = quantize_to_fp8(
                w, per_row=per_row, dtype=fmt
            )
    for fmt in ("int8_tensorwise", "int8_convrot", "nvfp4", "nvfp4_prescaled", "mxfp8"):
        tensors = {f"w.{k}": v for k, v in comfy_quant_layer(w, fmt).items()}
        weights[fmt] = split_quantized_state_dict(tensors)[1]["w.weight"]
    return weights


def test_the_cuda_test_weights_are_valid() -> None:
    """The GPU tests' weights, checked where the tests run every day: finite and of the right shape."""
    for name, weight in _cuda_weights().items():
        expanded = QuantLinear(weight, compute_dtype=torch.float32).weight
        assert expanded.shape == (96, 512) and torch.isfinite(expanded).all(), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_compiled_dequantization_is_bit_equal_to_eager_on_cuda(monkeypatch, dtype) -> None:
    for name, weight in _cuda_weights().items():
        q = QuantLinear(weight, compute_dtype=dtype).cuda()
        monkeypatch.setenv(EAGER_ENV, "1")
        eager = q.dequantize_weight()
        monkeypatch.delenv(EAGER_ENV)
        compiled = q.dequantize_weight()
        key = weight.expand_key
        assert key in quant._COMPILED and key not in quant._BROKEN, name
        assert compiled.dtype == eager.dtype == dtype
        assert torch.equal(
            compiled.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
            eager.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
        ), name


@pytest.mark.gpu
def test_quant_linear_output_is_the_same_compiled_or_eager_on_cuda(monkeypatch) -> None:
    x = torch.randn(2, 77, 512, generator=gen(6)).cuda()
    for name, weight in _cuda_weights().items():
        q = QuantLinear(weight, torch.randn(96, generator=gen(7)), compute_dtype=torch.bfloat16).cuda()
        monkeypatch.setenv(EAGER_ENV, "1")
        eager = q(x)
        monkeypatch.delenv(EAGER_ENV)
        assert torch.equal(q(x), eager), name
    # Inside an outer compile region the plain dequantizer is traced and fused there: same result.
    for name in ("Q4_K", "int8_convrot", "nvfp4_prescaled", "mxfp8"):
        q = QuantLinear(_cuda_weights()[name], compute_dtype=torch.bfloat16).cuda()
        torch._dynamo.reset()
        outer = torch.compile(q, dynamic=False, fullgraph=True)
        # The fused graph may pick its own GEMM: equal up to bf16 rounding of the output.
        torch.testing.assert_close(outer(x), q(x), rtol=2**-7, atol=1e-3, msg=name)


def test_every_compiled_dequantizer_traces_fullgraph_with_its_arguments() -> None:
    """What `_run_compiled` hands torch.compile on CUDA (the weight's tensors, then its static fields: a
    GGUF type, a shape, a flag, a group size), traced here with the CPU-safe aot_eager backend."""
    for name, weight in _cuda_weights().items():
        fn = quant._eager_expander(type(weight), weight.expand_key)
        args = [getattr(weight, f) for f in (*weight.tensor_fields(), *weight.static_fields())]
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=False)
        assert torch.equal(compiled(*args, torch.bfloat16), weight.expand(torch.bfloat16)), name
