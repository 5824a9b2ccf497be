"""zturbo's ControlNet on zturbo's DiT against diffusers' `ZImageControlNetModel` + transformer, per release.

Tolerances (fp32, CPU): relative error ≤ 1e-5 on the DiT output (measured 4e-7 to 6e-7, the DiT's own
reordering of fp32 rounding: fused Q‖K‖V / W1‖W3, real-valued RoPE).

Two semantics (see zturbo.models.controlnet): `refiner_to_base=False` is diffusers' pipeline exactly;
the default (VideoX-Fun's training code, ComfyUI) also adds the 2.x refiner hints to the DiT's own noise
refiner, which the test builds from diffusers' modules: the same ControlNet samples, plus forward hooks
on the transformer's noise-refiner layers adding the refiner hints the ControlNet computed.
"""

from __future__ import annotations

import pytest
import torch

from zturbo.checkpoints.controlnet import load_controlnet
from zturbo.models import controlnet as cn
from zturbo.models.zimage_convert import from_diffusers
from zturbo.testing.controlnet_files import CONTROL_DIT, RELEASES, write_controlnet
from zturbo.testing.synthetic import build_random_dit

PARITY = 1e-5
STRENGTH = 0.75


def reference_dit():
    model, state = build_random_dit(CONTROL_DIT, seed=3)
    model.load_state_dict(state, assign=True)
    return model.eval()


@pytest.fixture(scope="module")
def dits():
    return reference_dit(), from_diffusers(reference_dit())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnets")
    return {r: write_controlnet(root / f"{r.replace(' ', '_')}.safetensors", r) for r in RELEASES}


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def inputs(batch: int, lengths: list[int], channels: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 8, 12, generator=gen)
    t = torch.rand(batch, generator=gen)
    captions = [torch.randn(n, CONTROL_DIT.cap_feat_dim, generator=gen) for n in lengths]
    return x, t, captions, torch.randn(batch, channels, 8, 12, generator=gen)


def diffusers_forward(transformer, controlnet, x, t, captions, context, *, to_base: bool):
    """diffusers' modules; with `to_base`, the refiner hints also reach the transformer's noise refiner."""
    controlnet = type(controlnet).from_transformer(controlnet, transformer)
    latents = list(x.unsqueeze(2).unbind(0))
    refiner_hints: dict[int, torch.Tensor] = {}
    handles = []
    mode = controlnet.add_control_noise_refiner
    stage = controlnet.control_noise_refiner if mode == "control_noise_refiner" else controlnet.control_layers
    if to_base and mode is not None:
        for j in controlnet.control_refiner_layers_places:

            def capture(module, args, out, j=j):
                refiner_hints.setdefault(j, out[j] * STRENGTH)  # the first call: the refiner stage

            handles.append(stage[j].register_forward_hook(capture))
    samples = controlnet(
        latents, t, captions, list(context.unsqueeze(2).unbind(0)), conditioning_scale=STRENGTH
    )
    for handle in handles:
        handle.remove()
    for j, hint in refiner_hints.items():
        handles.append(transformer.noise_refiner[j].register_forward_hook(lambda m, a, out, h=hint: out + h))
    try:
        out = transformer(latents, t, captions, controlnet_block_samples=samples, return_dict=False)[0]
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(out).squeeze(2)


# (batch, caption lengths, to_base): batch padding (masks) checked once, in diffusers' semantics
CASES = {
    "diffusers-batch2-mask": ((2, [20, 45]), False),
    "videox-fun": ((1, [20]), True),
}


@pytest.mark.parametrize(("case", "to_base"), CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("release", RELEASES)
def test_matches_diffusers_modules(dits, files, release, case, to_base):
    reference, ours = dits
    ref_net, info = load_controlnet(files[release], dtype=torch.float32)
    net = cn.from_diffusers(load_controlnet(files[release], dtype=torch.float32)[0], info.spec)
    x, t, captions, context = inputs(*case, info.spec.control_in_dim)
    with torch.no_grad():
        expected = diffusers_forward(reference, ref_net, x, t, captions, context, to_base=to_base)
        got = ours(
            x, t, captions, controls=[cn.ControlInput(net, context, STRENGTH, refiner_to_base=to_base)]
        )
        plain = ours(x, t, captions)
    assert rel_error(got, expected) <= PARITY
    assert rel_error(plain, expected) > 0.05  # the control is not a no-op


def test_semantics_differ_only_for_2x(dits, files):
    _, ours = dits
    for release in RELEASES:
        model, info = load_controlnet(files[release], dtype=torch.float32)
        net = cn.from_diffusers(model, info.spec)
        x, t, captions, context = inputs(1, [20], info.spec.control_in_dim)
        with torch.no_grad():
            a, b = (
                ours(x, t, captions, controls=[cn.ControlInput(net, context, 1.0, to)])
                for to in (True, False)
            )
        assert torch.equal(a, b) == (release == "1.0")


def test_two_controlnets_add_up(dits, files):
    """Two applications: each adds its own hints (strength 0 is the plain DiT, exactly)."""
    _, ours = dits
    model, info = load_controlnet(files["2.1 Lite"], dtype=torch.float32)
    net = cn.from_diffusers(model, info.spec)
    x, t, captions, context = inputs(1, [20], 33)
    with torch.no_grad():
        plain = ours(x, t, captions)
        zero = ours(x, t, captions, controls=[cn.ControlInput(net, context, 0.0)] * 2)
        one = ours(x, t, captions, controls=[cn.ControlInput(net, context, 0.5)])
        two = ours(x, t, captions, controls=[cn.ControlInput(net, context, 0.5)] * 2)
    assert torch.equal(zero, plain)
    assert rel_error(two, one) > 1e-3 and rel_error(one, plain) > 1e-3
