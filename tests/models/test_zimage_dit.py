"""zturbo's Z-Image DiT against diffusers' ZImageTransformer2DModel on the same random weights.

Tolerance (fp32, CPU): relative error ≤ 1e-5 on the output, for every batch/caption/size layout
(measured ~3e-7: fused GEMMs and real-valued RoPE only reorder fp32 rounding). RoPE tables and
position ids must be identical, not merely close.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from diffusers.models.transformers.transformer_z_image import RopeEmbedder

from zturbo.models.zimage_convert import SplitLinear, from_diffusers
from zturbo.models.zimage_dit import ZImageDiT
from zturbo.models.zimage_layout import (
    apply_rope,
    padded_length,
    position_ids,
    rope_angles,
    rope_cos_sin,
    rope_real,
)
from zturbo.quant.fp8 import quantize_to_fp8
from zturbo.quant.linear import QuantLinear, load_state_dict_with_quant
from zturbo.testing.synthetic import TINY_DIT, build_random_dit

PARITY = 1e-5
CAP_DIM = TINY_DIT.cap_feat_dim


def reference_dit(seed: int = 3, dtype: torch.dtype = torch.float32):
    model, state_dict = build_random_dit(TINY_DIT, seed=seed, dtype=dtype)
    model.load_state_dict(state_dict, assign=True)
    return model.eval()


def run_reference(model, x: torch.Tensor, t: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
    out = model(list(x.unsqueeze(2).unbind(0)), t, captions, return_dict=False)[0]
    return torch.stack(out).squeeze(2)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def inputs(batch: int, size: tuple[int, int], lengths: list[int], dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, *size, generator=gen).to(dtype)
    t = torch.rand(batch, generator=gen).to(dtype)
    return x, t, [torch.randn(n, CAP_DIM, generator=gen).to(dtype) for n in lengths]


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, ZImageDiT]:
    return reference_dit(), from_diffusers(reference_dit())


LAYOUTS = {
    "batch1": (1, (16, 16), [20]),
    "batch2-equal": (2, (16, 16), [40, 40]),
    "batch2-mask": (2, (16, 16), [20, 45]),
    "batch3-mask-nonsquare": (3, (24, 8), [32, 7, 64]),
    "nonsquare-image-pads": (1, (12, 20), [7]),  # 6x10 = 60 image tokens → 4 pad tokens
    "same-padded-length": (2, (16, 16), [33, 40]),  # both pad to 64: no mask needed
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_matches_diffusers_fp32(pair, layout):
    reference, ours = pair
    x, t, captions = inputs(*layout)
    with torch.no_grad():
        expected = run_reference(reference, x, t, captions)
        got = ours(x, t, captions)
    assert got.shape == expected.shape
    assert rel_error(got, expected) <= PARITY


@pytest.mark.parametrize(
    ("lengths", "masked"), [([20], False), ([40, 40], False), ([33, 40], False), ([20, 45], True)]
)
def test_mask_only_for_batch_padding(pair, lengths, masked):
    plan = pair[1].plans.get(8, 8, lengths, torch.device("cpu"))
    assert (plan.mask is not None) == masked
    assert (plan.caption_mask is not None) == masked


def test_bf16_close_to_diffusers_bf16():
    """bf16: fused GEMMs and single-rounding RMSNorm move the output by ~1e-2 (one forward, measured);
    the reference itself is ~0.2 away from fp32 compute on the same weights, so this is bf16 noise."""
    reference, ours = reference_dit(dtype=torch.bfloat16), from_diffusers(reference_dit(dtype=torch.bfloat16))
    x, t, captions = inputs(2, (16, 16), [20, 45], torch.bfloat16)
    with torch.no_grad():
        assert rel_error(ours(x, t, captions), run_reference(reference, x, t, captions)) <= 2e-2


def test_real_valued_rope_equals_the_complex_multiply():
    """The compiled path's real arithmetic, the eager path and diffusers' complex formula agree."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 40, 3, 32, generator=gen)
    angles = torch.rand(1, 40, 16, generator=gen) * 100
    cos, sin = torch.cos(angles), torch.sin(angles)
    expected = torch.view_as_real(
        torch.view_as_complex(x.reshape(2, 40, 3, 16, 2))
        * torch.polar(torch.ones_like(angles), angles).unsqueeze(2)
    ).flatten(3)
    assert (rope_real(x, cos, sin) - expected).abs().max() <= 1e-6
    assert (apply_rope(x, cos, sin) - expected).abs().max() <= 1e-6


def test_rope_tables_equal_diffusers_complex_freqs():
    dims, lens = [32, 48, 48], [1536, 512, 512]
    ids = position_ids(64, 48, 128, 160)
    expected = RopeEmbedder(256.0, dims, lens)(ids)
    cos, sin = rope_cos_sin(rope_angles(ids, dims, 256.0), torch.device("cpu"))
    assert torch.equal(cos, expected.real) and torch.equal(sin, expected.imag)


@pytest.mark.parametrize(("size", "caption"), [((16, 16), 20), ((12, 20), 64), ((24, 8), 7)])
def test_position_ids_match_diffusers(pair, size, caption):
    reference = pair[0]
    image, cap = torch.randn(16, 1, *size), torch.randn(caption, CAP_DIM)
    _, _, _, image_ids, cap_ids, _, _ = reference.patchify_and_embed([image], [cap], 2, 1)
    cap_padded = padded_length(caption)
    ours = position_ids(size[0] // 2, size[1] // 2, cap_padded, cap_padded)
    image_len = len(image_ids[0])
    assert torch.equal(ours[:image_len], image_ids[0].long())
    assert torch.equal(ours[image_len:], cap_ids[0][:cap_padded].long())


def test_positions_beyond_the_model_range_are_refused(pair):
    with pytest.raises(ValueError, match="beyond the model's range"):
        pair[1].plans.get(600, 8, [20], torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conversion_shares_tensors_and_frees_separate_projections(dtype):
    module = reference_dit(dtype=dtype)
    block = module.layers[0]
    shared = {
        "out": block.attention.to_out[0].weight,
        "w2": block.feed_forward.w2.weight,
        "norm": block.attention_norm1.weight,
        "q_norm": block.attention.norm_q.weight,
        "adaln": block.adaLN_modulation[0].weight,
        "pad": module.cap_pad_token,
    }
    pointers = {name: t.data_ptr() for name, t in shared.items()}
    q, k, v = (block.attention.to_q.weight, block.attention.to_k.weight, block.attention.to_v.weight)
    expected_qkv = torch.cat([q, k, v]).clone()
    separate = [weakref.ref(t) for t in (q, k, v, block.feed_forward.w1.weight, block.feed_forward.w3.weight)]
    del q, k, v, shared
    dit = from_diffusers(module)
    gc.collect()
    ours = dit.layers[0]
    assert torch.equal(ours.qkv.weight, expected_qkv) and ours.qkv.weight.dtype == dtype
    assert {
        "out": ours.out.weight.data_ptr(),
        "w2": ours.w2.weight.data_ptr(),
        "norm": ours.attn_norm1.data_ptr(),
        "q_norm": ours.q_norm.data_ptr(),
        "adaln": ours.modulation.weight.data_ptr(),
        "pad": dit.cap_pad_token.data_ptr(),
    } == pointers
    assert all(ref() is None for ref in separate)  # released although `module` is still alive
    assert block.attention.to_q.weight.is_meta
    with pytest.raises(ValueError, match="converted already"):
        from_diffusers(module)


MIXED = ("to_q.weight", "to_k.weight", "w1.weight", "w3.weight")  # to_v stays plain: Q‖K‖V cannot fuse


def quantized_reference(seed: int = 3, names: tuple[str, ...] = MIXED):
    """The tiny DiT with its main layers' `names` weights as fp8 QuantLinears (computing in fp32)."""
    model, state_dict = build_random_dit(TINY_DIT, seed=seed)
    for name in list(state_dict):
        if name.startswith("layers.") and name.endswith(names):
            state_dict[name] = quantize_to_fp8(state_dict[name])
    load_state_dict_with_quant(model, state_dict, compute_dtype=torch.float32)
    return model.eval()


def test_quantized_layers_stay_separate_and_match():
    reference, ours = quantized_reference(), from_diffusers(quantized_reference())
    block = ours.layers[0]
    assert isinstance(block.qkv, SplitLinear) and isinstance(block.qkv.parts[0], QuantLinear)
    assert isinstance(block.w13, SplitLinear)
    assert isinstance(ours.noise_refiner[0].qkv, torch.nn.Linear)  # plain layers still fuse
    x, t, captions = inputs(2, (16, 16), [20, 45])
    with torch.no_grad():
        assert rel_error(ours(x, t, captions), run_reference(reference, x, t, captions)) <= PARITY


@pytest.mark.gpu
def test_resident_quantized_layers_fuse_on_gpu():
    """On the GPU, quantized Q‖K‖V and W1‖W3 stack into one QuantLinear each; outputs unchanged."""
    names = (*MIXED, "to_v.weight")
    reference = quantized_reference(names=names).cuda()
    ours = from_diffusers(quantized_reference(names=names).cuda())
    block = ours.layers[0]
    assert isinstance(block.qkv, QuantLinear) and isinstance(block.w13, QuantLinear)
    x, t, captions = inputs(2, (16, 16), [20, 45])
    x, t, captions = x.cuda(), t.cuda(), [c.cuda() for c in captions]
    with torch.no_grad():
        assert rel_error(ours(x, t, captions), run_reference(reference, x, t, captions)) <= PARITY


def test_rejects_wrong_batch(pair):
    x, t, captions = inputs(2, (16, 16), [20])
    with pytest.raises(ValueError, match="1 captions for a batch of 2"):
        pair[1](x, t, captions)
