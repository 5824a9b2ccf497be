"""The fp16-safe DiT path on weights that overflow fp16 the way the released model does.

Weights: `zturbo.testing.overflow` (tiny DiT; fp32 activations reach ~2e5 in the residual and
~1.7e5 at W₂'s output, fp16 ends at 65504). Plain fp16, ours and diffusers' class alike, returns
inf/NaN on them; the fp16-safe path returns finite values close to fp32 on the same weights.

The bound (whole forward, relative L2 error against fp32): every fp16 rounding moves its tensor by at
most u = 2⁻¹¹ (11-bit significand); the fp16-safe block rounds at most ROUNDINGS_PER_BLOCK times
along its data path (branch inputs, GEMM outputs, q/k, attention probabilities and output,
modulation), the embedders and the final layer EXTRA_ROUNDINGS times; the residual and the norms are
fp32. To first order the perturbations add along the residual, none amplified (the test weights are as
well conditioned as a trained model: u-sized noise after every block moves the output by ~u), so

    rel_error ≤ (blocks · ROUNDINGS_PER_BLOCK + EXTRA_ROUNDINGS) · u = (6·12 + 4) · 2⁻¹¹ ≈ 3.7e-2.

Measured on CPU: 4.0e-4 (3e-4 – 1.5e-3 over the other seeds and weight settings tried: rounding
errors are not aligned, so they add like a random walk), while the default bf16 path (u = 2⁻⁸) lands
at 3.7e-3 (4e-3 – 9e-3) from fp32 on the same weights: the fp16-safe path is ~10x closer to fp32 than
bf16 is. Per block (the same fp32 input to both): the update's relative error is bounded by
ROUNDINGS_PER_BLOCK · u = 5.9e-3, measured 2.5e-4 – 7e-4 (bf16: 2e-3 – 1.6e-2).
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from zturbo.checkpoints.load import load_dit
from zturbo.errors import InputError
from zturbo.models import zimage_fp16
from zturbo.models.zimage_convert import SplitLinear, from_diffusers
from zturbo.models.zimage_dit import ZImageDiT
from zturbo.patches.apply import PatchedLinear
from zturbo.quant.fp8 import quantize_to_fp8
from zturbo.quant.linear import QuantLinear, load_state_dict_with_quant
from zturbo.testing.overflow import overflow_prone_dit, write_overflow_prone_models
from zturbo.testing.synthetic_quant import gguf_dit_from

U = 2.0**-11
FP16_MAX = 65504.0
ROUNDINGS_PER_BLOCK = 12
EXTRA_ROUNDINGS = 4
BLOCKS = 6  # TINY_DIT: 2 noise refiner, 2 context refiner, 2 main layers
BOUND = (BLOCKS * ROUNDINGS_PER_BLOCK + EXTRA_ROUNDINGS) * U


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def reference(dtype: torch.dtype, seed: int = 0):
    """diffusers' class on the overflow-prone weights, in `dtype`."""
    model, state_dict = overflow_prone_dit(seed=seed)
    model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, assign=True)
    return model.eval()


def ours(dtype: torch.dtype, seed: int = 0) -> ZImageDiT:
    return from_diffusers(reference(dtype, seed))


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 16, 16, generator=gen)
    t = torch.rand(2, generator=gen)
    return x, t, [torch.randn(20, 32, generator=gen), torch.randn(45, 32, generator=gen)]


def run(model: ZImageDiT, x, t, captions, dtype: torch.dtype | None = None) -> torch.Tensor:
    """As the denoiser calls it: x and captions in the model's input dtype (or `dtype`), t in fp32."""
    dtype = dtype or model.input_dtype or torch.float32
    with torch.no_grad():
        return model(x.to(dtype), t, [c.to(dtype) for c in captions])


@pytest.fixture(scope="module")
def fp32_run():
    """The fp32 output, and the largest magnitudes seen in the residual and at W₂'s output."""
    model = ours(torch.float32)
    seen = {"residual": 0.0, "ffn": 0.0}

    def record(key):
        def hook(module, args, out):
            seen[key] = max(seen[key], float(out.abs().max()))

        return hook

    for block in model.blocks():
        block.register_forward_hook(record("residual"))
        block.w2.register_forward_hook(record("ffn"))
    return run(model, *inputs()), seen


def test_pow2_inverse_is_an_exact_power_of_two_into_1_2():
    amax = torch.tensor([3.4e5, 1.0, 0.75, 65504.0, 1e-12, 0.0, float("inf")])
    c = zimage_fp16.pow2_inverse(amax)
    mantissa, _ = torch.frexp(c)
    assert torch.all(mantissa == 0.5)  # powers of two
    scaled = amax[:5] * c[:5]
    assert torch.all((scaled >= 1) & (scaled < 2))
    assert c[5] == 2.0**60 and c[6] == 2.0**-60  # zero stays zero, inf stays inf


def test_scaled_rms_norm_forgets_a_power_of_two_exactly():
    y = torch.randn(3, 7, 64) * 300
    weight = torch.randn(64)
    c = torch.tensor(2.0**-9)
    expected = zimage_fp16.rms_norm32(y, weight, 1e-5, torch.tensor(1.0))
    assert torch.equal(zimage_fp16.rms_norm32(y * c, weight, 1e-5, c), expected)
    small = y * 1e-4  # where ε matters: the scale is divided out (exactly) before normalising
    expected = zimage_fp16.rms_norm32(small, weight, 1e-5, torch.tensor(1.0))
    assert torch.equal(zimage_fp16.rms_norm32(small * c, weight, 1e-5, c), expected)


def test_the_weights_overflow_fp16_in_fp32(fp32_run):
    _, seen = fp32_run
    assert seen["residual"] > 2 * FP16_MAX and seen["ffn"] > 2 * FP16_MAX


def test_plain_fp16_gives_inf_ours_and_diffusers():
    plain = ours(torch.float16)
    plain.set_precision("plain")
    assert not torch.isfinite(run(plain, *inputs(), dtype=torch.float16)).all()
    x, t, captions = inputs()
    with torch.no_grad():
        out = reference(torch.float16)(
            list(x.half().unsqueeze(2).unbind(0)), t.half(), [c.half() for c in captions], return_dict=False
        )[0]
    assert not all(torch.isfinite(o).all() for o in out)


def test_fp16_safe_is_finite_and_within_the_bound_of_fp32(fp32_run):
    expected, _ = fp32_run
    safe = ours(torch.float16)
    assert safe.precision == "fp16"  # the default for fp16 weights
    got = run(safe, *inputs())
    assert torch.isfinite(got).all()
    error = rel_error(got, expected)
    bf16 = rel_error(run(ours(torch.bfloat16), *inputs(), dtype=torch.bfloat16), expected)
    assert error <= BOUND
    assert error <= bf16 / 4  # 3 more significand bits than bf16, and an fp32 residual


def test_each_fp16_safe_block_is_within_its_rounding_bound():
    full, safe = ours(torch.float32), ours(torch.float16)
    seen: dict[int, tuple] = {}
    for i, block in enumerate(full.blocks()):
        block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args))
    run(full, *inputs())
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(full.blocks(), safe.blocks(), strict=True)):
            x, *rest = seen[i]
            update = a(x, *rest) - x
            assert rel_error(b(x, *rest) - x, update) <= ROUNDINGS_PER_BLOCK * U


def test_fp32_compute_over_fp16_weights_matches_fp32(fp32_run):
    """The watchdog's safer path: fp16 (here bf16-exact) weights, fp32 arithmetic."""
    expected, _ = fp32_run
    model = ours(torch.float16)
    model.set_precision("fp32")
    assert rel_error(run(model, *inputs()), expected) <= 1e-4


def test_fp16_safe_needs_fp16_weights():
    with pytest.raises(ValueError, match="needs fp16 weights"):
        ours(torch.bfloat16).set_precision("fp16")


def test_weights_beyond_fp16_range_are_refused():
    model, state_dict = overflow_prone_dit()
    state_dict["layers.0.ffn_norm1.weight"][0] = 1e5  # inf once cast to fp16
    model.load_state_dict({k: v.half() for k, v in state_dict.items()}, assign=True)
    with pytest.raises(InputError, match="beyond fp16's range"):
        from_diffusers(model)


def quantized(compute_dtype: torch.dtype, names=("to_q.weight", "to_k.weight", "w1.weight", "w3.weight")):
    """The overflow-prone DiT with main-layer `names` as fp8 QuantLinears computing in `compute_dtype`."""
    model, state_dict = overflow_prone_dit()
    state_dict = {k: v.to(compute_dtype) for k, v in state_dict.items()}
    for name in list(state_dict):
        if name.startswith("layers.") and name.endswith(names):
            state_dict[name] = quantize_to_fp8(state_dict[name].float())
    load_state_dict_with_quant(model, state_dict, compute_dtype=compute_dtype)
    return from_diffusers(model.eval())


def test_fp16_safe_with_fp8_layers_and_a_lora_side_path():
    """QuantLinear (fp8) parts inside SplitLinear, and a PatchedLinear side term, in fp16: finite and
    as close to fp32 arithmetic on the same stored weights as plain layers are."""
    safe, full = quantized(torch.float16), quantized(torch.float16)
    full.set_precision("fp32")
    qkv = safe.layers[0].qkv
    assert isinstance(qkv, SplitLinear) and isinstance(qkv.parts[0], QuantLinear)
    gen = torch.Generator().manual_seed(7)
    down, up = torch.randn(4, 64, generator=gen) * 0.1, torch.randn(170, 4, generator=gen) * 0.1
    for model in (safe, full):  # a LoRA on W₁'s rows, as zturbo.patches adds to a quantized layer
        wrapped = PatchedLinear(model.layers[1].w13)
        wrapped.terms.append((0, 170, down.half(), up.half()))
        model.layers[1].w13 = wrapped
    expected = run(full, *inputs())
    got = run(safe, *inputs())
    assert torch.isfinite(got).all()
    assert rel_error(got, expected) <= BOUND


def test_fp16_safe_with_a_gguf_file(tmp_path):
    """A Q8_0 GGUF of the overflow-prone DiT: fp16 compute stays finite and near fp32 compute."""
    paths = write_overflow_prone_models(tmp_path / "models")
    gguf = gguf_dit_from(paths["dit"], tmp_path / "dit_q8_0.gguf", Q.Q8_0)
    safe = from_diffusers(load_dit(gguf, dtype=torch.float16).module.eval())
    full = from_diffusers(load_dit(gguf, dtype=torch.float32).module.eval())
    assert safe.precision == "fp16" and isinstance(safe.layers[0].qkv.parts[0], QuantLinear)
    expected = run(full, *inputs())
    got = run(safe, *inputs())
    assert torch.isfinite(got).all()
    assert rel_error(got, expected) <= BOUND


@pytest.fixture
def compile_cache(request, monkeypatch):
    """Inductor's cache in pytest's cache folder (as tests/runtime/test_compile.py keeps it)."""
    folder = request.config.cache.mkdir("zturbo-inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    try:
        torch.compile(lambda a: a * 2 + 1, dynamic=False)(torch.ones(3))
    except Exception as exc:  # no C++ compiler, unsupported platform...
        pytest.skip(f"torch.compile does not work on this machine: {exc}")
    return folder


def test_compiled_fp16_safe_block_is_one_graph_and_within_the_bound(fp32_run, compile_cache):
    """The compiled block function (fullgraph: any graph break fails) on CPU inductor."""
    from zturbo.runtime.compile import SpeedOptions, accelerate

    expected, _ = fp32_run
    model = accelerate(ours(torch.float16), SpeedOptions("compile", cache_dir=compile_cache))
    got = run(model, *inputs())
    assert torch.isfinite(got).all()
    assert rel_error(got, expected) <= BOUND


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["eager", "compile", "max"])
def test_fp16_safe_on_cuda_in_every_speed_mode(mode):
    """cuBLAS/cuDNN kernels, the compiled block (fused scaling) and CUDA graphs: finite, within the bound."""
    from zturbo.runtime.compile import SpeedOptions, accelerate

    x, t, captions = inputs()
    x, t, captions = x.cuda(), t.cuda(), [c.cuda() for c in captions]
    expected = run(ours(torch.float32).cuda(), x, t, captions)
    model = accelerate(ours(torch.float16).cuda(), SpeedOptions(mode))
    for _ in range(2):  # the second call replays the graph in max mode
        got = run(model, x, t, captions)
        assert torch.isfinite(got).all()
        assert rel_error(got, expected) <= BOUND
