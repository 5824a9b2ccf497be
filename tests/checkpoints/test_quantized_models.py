"""Quantized model files through the normal loaders: GGUF DiT + text encoder, ComfyUI fp8, fp8 on load.

Tolerances (fp32 on CPU):
- GGUF: a model loaded from GGUF files generates exactly (`torch.equal`) the image of the same model
  dequantized by the `gguf` package's reference and saved as fp32 safetensors: our kernels are
  bit-exact (each expanded weight is compared bit for bit) and a quantized Linear computes
  `F.linear(x, dequantized W)` like `nn.Linear`, on the same shapes, strides and dtype.
- ComfyUI fp8 files: exactly the image of their `fp8 · scale` fp32 expansion (weights bit for bit too);
  each weight is within fp8 rounding of the bf16 original: |ŵ − w| ≤ 2⁻⁴·|w| + 2⁻⁹·scale (e4m3; 2⁻³
  and 2⁻¹⁶ for e5m2).
- fp8 on load (`weight_dtype`): exactly the image of `quantize_to_fp8` weights expanded, same bound.

Why the images can be compared bit for bit: both sides run the same modules on the same shapes,
strides and dtypes, so what is left is where each weight sits in memory, and that matters (see
tests/conftest.py): the twin's weights are views of its memory-mapped fp32 file at the file's byte
offsets, ours are fresh dequantized or cast tensors, and MKL's fp32 GEMV (the timestep MLP and every
adaLN modulation run at batch 1) rounds differently on AMD CPUs when a weight is not 16-byte aligned:
the fp8 comparisons differed by ~1e-4 there (issue 12; reproduced on Intel with
`MKL_ENABLE_INSTRUCTIONS=SSE4_2`). `generate` and the forward tests therefore copy both sides' weights
(`fresh_weights`) before comparing; then they do the same arithmetic in the same order by construction.
The loader itself rightly keeps weights mapped (no RAM spent); the reordering is not a bug.
The streamed GGUF model needs no copy: every 2-D weight it multiplies with is a fresh tensor on both
sides (quantized ones are expanded per call, BF16 ones cast to fp32, streamed ones sit in the slots);
the mapped F32 tensors are 1-D norms and biases, used elementwise, where alignment changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file
from torch import nn

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.inventory import describe_models
from zturbo.checkpoints.layout import COMFY_FILES, ModelPaths, tokenizer_dir
from zturbo.checkpoints.load import load_dit, load_text_encoder
from zturbo.engine import Engine
from zturbo.errors import ModelFileError
from zturbo.generate import run_request
from zturbo.quant.fp8 import quantize_to_fp8
from zturbo.quant.linear import QuantLinear
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.gguf_write import write_gguf
from zturbo.testing.synthetic import TINY, write_comfy_models
from zturbo.testing.synthetic_quant import (
    GGUF_TINY,
    dequantized_fp8,
    dequantized_gguf,
    fp8_file_from,
    gguf_dit_from,
    gguf_text_encoder_from,
    read_safetensors,
    stored_types,
)

REQUEST = GenerationRequest("a red fox, 狐狸", width=64, height=48, steps=2, sampler="euler", seed=7)
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
REL = {E4M3: 2.0**-4, E5M2: 2.0**-3}
SUBNORMAL = {E4M3: 2.0**-9, E5M2: 2.0**-16}
DIT_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K]
TE_TYPES = [Q.Q8_0, Q.Q4_K]


@pytest.fixture
def generate(fresh_weights):
    """`generate(dit, te, vae, weight_dtype)`: one image, the DiT and the text encoder computing from
    fresh copies of their weights (the VAE is the same file on both sides of every comparison here)."""

    def run(dit: Path, te: Path, vae: Path, weight_dtype: str = "default"):
        engine = Engine(EngineSettings("cpu", "fp32", speed="reference", weight_dtype=weight_dtype))
        paths = ModelPaths(dit, te, vae, tokenizer_dir(None))
        model, clip, _ = engine.load_all(paths, weight_dtype)  # cached: run_request reuses these modules
        fresh_weights(model.transformer, clip.component.module)
        return run_request(engine, paths, REQUEST)

    return run


@pytest.fixture(scope="module")
def gguf_models(tmp_path_factory) -> Path:
    """GGUF_TINY bf16 files, their GGUF versions in several types, and those dequantized (fp32)."""
    root = tmp_path_factory.mktemp("gguf_models")
    write_comfy_models(root, GGUF_TINY, dtype=torch.bfloat16, dit_prefix="model.diffusion_model.")
    for qtype in DIT_TYPES:
        gguf_dit_from(root / COMFY_FILES[DIT], root / f"dit-{qtype.name}.gguf", qtype)
        dequantized_gguf(root / f"dit-{qtype.name}.gguf", root / f"dit-{qtype.name}.safetensors")
    for qtype in TE_TYPES:
        gguf_text_encoder_from(root / COMFY_FILES[TEXT_ENCODER], root / f"te-{qtype.name}.gguf", qtype)
        dequantized_gguf(
            root / f"te-{qtype.name}.gguf", root / f"te-{qtype.name}.safetensors", text_encoder=True
        )
    return root


@pytest.mark.parametrize(("dit_type", "te_type"), [(Q.Q8_0, Q.Q8_0), (Q.Q4_K, Q.Q4_K)], ids=str)
def test_gguf_model_equals_its_dequantized_twin(gguf_models: Path, generate, dit_type: Q, te_type: Q) -> None:
    vae = gguf_models / COMFY_FILES[VAE]
    quantized = generate(
        gguf_models / f"dit-{dit_type.name}.gguf", gguf_models / f"te-{te_type.name}.gguf", vae
    )
    reference = generate(
        gguf_models / f"dit-{dit_type.name}.safetensors", gguf_models / f"te-{te_type.name}.safetensors", vae
    )
    assert torch.equal(quantized.latents, reference.latents)
    assert torch.equal(quantized.images, reference.images)
    assert quantized.images.std() > 0.01


def test_streamed_gguf_model_equals_resident(gguf_models: Path) -> None:
    """Quantized blocks stream in their stored form (zturbo's DiT, eager) and compute the same image."""
    from zturbo.runtime.memory import MemoryPlan

    paths = ModelPaths(
        gguf_models / "dit-Q4_0.gguf",
        gguf_models / "te-Q8_0.gguf",
        gguf_models / COMFY_FILES[VAE],
        tokenizer_dir(None),
    )
    settings = EngineSettings("cpu", "fp32", speed="eager")
    resident = run_request(Engine(settings), paths, REQUEST)
    plan = MemoryPlan(level="dit-streamed", text_encoder="streamed", dit="streamed", dit_resident_blocks=1)
    streamed = run_request(Engine(settings.replace(plan=plan)), paths, REQUEST)
    assert torch.equal(streamed.latents, resident.latents)


def test_gguf_files_quantize_what_published_files_quantize(gguf_models: Path) -> None:
    types = stored_types(gguf_models / "dit-Q4_K.gguf")
    prefix = "model.diffusion_model."
    assert types[prefix + "layers.0.attention.qkv.weight"] == "Q4_K"
    assert types[prefix + "layers.1.feed_forward.w2.weight"] == "Q4_K"
    assert types[prefix + "layers.0.adaLN_modulation.0.weight"] == "Q4_K"
    for name in (
        "noise_refiner.0.attention.qkv.weight",
        "cap_embedder.1.weight",
        "final_layer.linear.weight",
    ):
        assert types[prefix + name] == "BF16", name
    assert types[prefix + "layers.0.attention.q_norm.weight"] == "F32"
    te = stored_types(gguf_models / "te-Q4_K.gguf")
    assert (
        te["token_embd.weight"] == te["blk.2.ffn_down.weight"] == "Q4_K" and te["output_norm.weight"] == "F32"
    )


def test_gguf_weights_stay_quantized_after_loading(gguf_models: Path) -> None:
    dit = load_dit(gguf_models / "dit-Q4_0.gguf", dtype=torch.float32).module
    assert (
        isinstance(dit.layers[0].attention.to_q, QuantLinear)
        and dit.layers[0].attention.to_q.quantized().qtype == Q.Q4_0
    )
    assert type(dit.noise_refiner[0].attention.to_q) is torch.nn.Linear  # refiners are not quantized
    te = load_text_encoder(gguf_models / "te-Q4_K.gguf", dtype=torch.float32).module
    assert isinstance(te.layers[0].mlp.down_proj, QuantLinear)
    assert te.embed_tokens.weight.dtype == torch.float32  # an embedding is expanded once, at load


def test_zturbo_models_names_gguf_files(gguf_models: Path, tmp_path: Path) -> None:
    for kind, name in ((DIT, "dit-Q4_0.gguf"), (TEXT_ENCODER, "te-Q8_0.gguf")):
        folder = tmp_path / COMFY_FILES[kind].split("/")[0]
        folder.mkdir()
        (folder / name).symlink_to(gguf_models / name)
    lines = "\n".join(describe_models(tmp_path))
    assert "[ok] diffusion_models/dit-Q4_0.gguf: Z-Image DiT (GGUF, ComfyUI/original layout)" in lines
    assert "[ok] text_encoders/te-Q8_0.gguf: Qwen3 text encoder (GGUF, llama.cpp layout), Q8_0" in lines


def test_foreign_architecture_text_encoder_is_refused(tmp_path: Path) -> None:
    """A llama-architecture GGUF (no QK-norm, other rope) is named, not half-loaded."""
    tensors = {
        "token_embd.weight": (torch.randn(64, 32), Q.F32),
        "blk.0.attn_q.weight": (torch.randn(32, 32), Q.Q8_0),
        "blk.0.attn_norm.weight": (torch.ones(32), Q.F32),
    }
    llama = write_gguf(tmp_path / "llama.gguf", "llama", tensors)
    with pytest.raises(ModelFileError, match=r"llama\.gguf.*architecture 'llama'.*Qwen3-4B"):
        load_text_encoder(llama, dtype=torch.float32)


@pytest.mark.parametrize("qtype", DIT_TYPES, ids=lambda q: q.name)
def test_every_dit_type_loads_the_reference_values(gguf_models: Path, fresh_weights, qtype: Q) -> None:
    """Each weight (the fused qkv split into whole-block rows included) expands to the reference."""
    quantized = load_dit(gguf_models / f"dit-{qtype.name}.gguf", dtype=torch.float32).module
    reference = load_dit(gguf_models / f"dit-{qtype.name}.safetensors", dtype=torch.float32).module
    expected = reference.state_dict()
    for name, module in quantized.named_modules():
        if isinstance(module, QuantLinear):
            assert module.quantized().qtype == qtype, name
            assert torch.equal(module.weight, expected[f"{name}.weight"]), name
    plain = quantized.state_dict()
    assert all(torch.equal(plain[k], expected[k]) for k in plain)
    fresh_weights(quantized, reference)
    x = torch.randn(1, 16, 6, 8, generator=torch.Generator().manual_seed(0))
    caption = [torch.randn(5, 256, generator=torch.Generator().manual_seed(1))]
    t = torch.tensor([0.4])
    out = quantized(list(x.unsqueeze(2)), t, caption, return_dict=False)[0][0]
    assert torch.equal(out, reference(list(x.unsqueeze(2)), t, caption, return_dict=False)[0][0])


# --- fp8 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fp8_models")
    write_comfy_models(root, TINY, dtype=torch.bfloat16, dit_prefix="model.diffusion_model.")
    return root


def _assert_expands_to(dit: nn.Module, expansion: Path) -> None:
    """Every quantized weight of `dit` expands bit for bit to its twin's (one rounding of fp8 · scale)."""
    twin = load_dit(expansion, dtype=torch.float32).module.state_dict()
    quantized = [(name, m) for name, m in dit.named_modules() if isinstance(m, QuantLinear)]
    assert quantized and all(torch.equal(m.weight, twin[f"{name}.weight"]) for name, m in quantized)


def _assert_within_fp8_rounding(
    got: torch.Tensor, original: torch.Tensor, scale: torch.Tensor, dtype
) -> None:
    bound = REL[dtype] * original.abs() + SUBNORMAL[dtype] * scale
    assert bool(((got - original).abs() <= bound * 1.0001).all())


@pytest.mark.parametrize("fmt", ["plain_e4m3", "plain_e5m2", "scaled_fp8", "comfy_quant"])
def test_comfy_fp8_dit_equals_its_expansion(bf16_models: Path, tmp_path: Path, generate, fmt: str) -> None:
    fp8 = fp8_file_from(bf16_models / COMFY_FILES[DIT], tmp_path / f"{fmt}.safetensors", fmt)
    expanded = dequantized_fp8(fp8, tmp_path / "expanded.safetensors")
    te, vae = bf16_models / COMFY_FILES[TEXT_ENCODER], bf16_models / COMFY_FILES[VAE]
    ours, reference = generate(fp8, te, vae), generate(expanded, te, vae)
    assert torch.equal(ours.latents, reference.latents)
    _assert_expands_to(load_dit(fp8, dtype=torch.float32).module, expanded)

    dtype = E5M2 if fmt == "plain_e5m2" else E4M3
    original = read_safetensors(bf16_models / COMFY_FILES[DIT])
    key = "model.diffusion_model.layers.1.feed_forward.w1.weight"
    stored = read_safetensors(fp8)
    scale = stored.get(
        key.replace(".weight", ".scale_weight"), stored.get(key.replace(".weight", ".weight_scale"))
    )
    scale = torch.ones(()) if scale is None else scale.float()
    _assert_within_fp8_rounding(read_safetensors(expanded)[key], original[key].float(), scale, dtype)
    dit = load_dit(fp8, dtype=torch.float32).module
    assert isinstance(dit.layers[1].feed_forward.w1, QuantLinear)


def test_comfy_fp8_mixed_text_encoder_loads(bf16_models: Path, tmp_path: Path, fresh_weights) -> None:
    def linear(name: str, shape: tuple[int, ...]) -> bool:
        return len(shape) == 2 and ".layers." in f".{name}" and "embed" not in name

    fp8 = fp8_file_from(
        bf16_models / COMFY_FILES[TEXT_ENCODER], tmp_path / "te.safetensors", "comfy_quant", quantize=linear
    )
    expanded = dequantized_fp8(fp8, tmp_path / "te_expanded.safetensors")
    a = load_text_encoder(fp8, dtype=torch.float32).module
    b = load_text_encoder(expanded, dtype=torch.float32).module
    fresh_weights(a, b)
    ids = torch.tensor([[151644, 872, 198, 64, 151645]])
    assert isinstance(a.layers[0].self_attn.q_proj, QuantLinear)
    assert torch.equal(a(ids).last_hidden_state, b(ids).last_hidden_state)


@pytest.mark.parametrize(("weight_dtype", "dtype"), [("fp8_e4m3fn", E4M3), ("fp8", E4M3), ("fp8_e5m2", E5M2)])
def test_fp8_on_load_equals_quantize_to_fp8(
    bf16_models: Path, tmp_path: Path, generate, weight_dtype: str, dtype
) -> None:
    """Per-row scales make quantizing the fused qkv the same as quantizing q, k, v after the split."""
    source = bf16_models / COMFY_FILES[DIT]
    original = read_safetensors(source)
    expanded = {}
    for key, value in original.items():
        if key.removeprefix("model.diffusion_model.").startswith("layers.") and value.ndim == 2:
            quantized = quantize_to_fp8(value, dtype=dtype)
            value = quantized.dequantize(torch.float32)
            _assert_within_fp8_rounding(value, original[key].float(), quantized.scale, dtype)
        expanded[key] = value.float().contiguous()
    save_file(expanded, str(tmp_path / "expanded.safetensors"))
    te, vae = bf16_models / COMFY_FILES[TEXT_ENCODER], bf16_models / COMFY_FILES[VAE]
    ours = generate(source, te, vae, weight_dtype=weight_dtype)
    reference = generate(tmp_path / "expanded.safetensors", te, vae)
    assert torch.equal(ours.latents, reference.latents)
    dit = load_dit(source, dtype=torch.float32, weight_dtype=weight_dtype).module
    _assert_expands_to(dit, tmp_path / "expanded.safetensors")
    assert dit.layers[0].attention.to_q.quantized().data.dtype == dtype
    assert type(dit.noise_refiner[0].attention.to_q) is torch.nn.Linear
    assert type(dit.all_x_embedder["2-1"]) is torch.nn.Linear


def test_unknown_weight_dtype_is_named(bf16_models: Path) -> None:
    from zturbo.errors import InputError

    with pytest.raises(InputError, match="fp8_e4m3fn_fast"):
        load_dit(bf16_models / COMFY_FILES[DIT], dtype=torch.float32, weight_dtype="int4")
