"""Streamed blocks compute exactly what resident blocks compute (CPU: the same code path, no streams).

Exact by construction: a streamed block runs the same modules on copies of its own tensors (same
dtypes, shapes and strides), in slots at 256-byte offsets of a fresh buffer. The resident side must
then compute from fresh (64-byte-aligned) tensors too, or the comparison also measures memory layout
(tests/conftest.py): an fp32 file loaded in fp32 leaves its weights mapped at the file's byte offsets,
and MKL's fp32 GEMV (the adaLN modulations at batch 1) rounds those differently from aligned copies on
AMD CPUs (issue 12: latents 1e-4 apart; reproduced on Intel with `MKL_ENABLE_INSTRUCTIONS=SSE4_2`). So
the model-file tests load the bf16 files (`tiny_models`) in fp32: every weight is then a fresh cast on
both sides. The toy blocks' tensors are fresh allocations already.
"""

from __future__ import annotations

import dataclasses

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from torch import nn

from zturbo.checkpoints.detect import DIT
from zturbo.checkpoints.layout import COMFY_FILES, resolve_models
from zturbo.checkpoints.load import load_dit, load_vae
from zturbo.engine import Engine
from zturbo.generate import run_request
from zturbo.quant.fp8 import quantize_to_fp8
from zturbo.quant.gguf import GGUFWeight
from zturbo.quant.linear import QuantLinear
from zturbo.request import GenerationRequest
from zturbo.runtime import residency
from zturbo.runtime.compile import SpeedOptions, accelerate
from zturbo.runtime.memory import MemoryPlan
from zturbo.runtime.offload import BlockStreamer, on_device
from zturbo.runtime.settings import EngineSettings

CPU = torch.device("cpu")
STREAMED = MemoryPlan(level="dit-streamed", text_encoder="streamed", dit="streamed", dit_resident_blocks=2)
ALL_STREAMED = MemoryPlan(level="dit-streamed-all", text_encoder="streamed", dit="streamed", vae_tiled=True)

SETTINGS = EngineSettings("cpu", "fp32")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Block(nn.Module):
    """Plain, GGUF and fp8 layers plus a buffer: every kind of tensor a streamed block carries."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        w = torch.randn(64, 64, generator=gen(seed))
        raw = torch.from_numpy(gguf.quants.quantize(w.numpy(), Q.Q4_0))
        self.a = nn.Linear(64, 64)
        self.b = QuantLinear(GGUFWeight(raw, Q.Q4_0, w.shape), torch.randn(64), compute_dtype=torch.float32)
        self.c = QuantLinear(quantize_to_fp8(w.T.contiguous()), compute_dtype=torch.float32)
        self.register_buffer("shift", torch.randn(64, generator=gen(seed + 100)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.c(self.b(self.a(x)))) + self.shift


def toy(n: int = 5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[Block(i) for i in range(n)])


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("resident", [set(), {1, 3}, {0, 1, 2, 3}])
def test_streamed_blocks_equal_resident(pack: bool, resident: set[int]) -> None:
    model, x = toy(), torch.randn(3, 64, generator=gen(9))
    expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    streamer = BlockStreamer(list(model), CPU, pin=False, resident=resident, pack=pack)
    assert streamer.order == [i for i in range(5) if i not in resident]
    for _ in range(3):  # wrap-around prefetch between calls
        assert torch.equal(model(x), expected)
    assert len(streamer.slots) == 2 and streamer.slots[0].numel() == streamer.slot_bytes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # pointed back at host
    streamer.release()
    assert streamer.slots == [] and torch.equal(model(x), expected)
    streamer.detach()
    assert not any(b._forward_pre_hooks or b._forward_hooks for b in model)
    assert torch.equal(model(x), expected)


def test_packing_keeps_one_host_copy() -> None:
    model = toy(2)
    streamer = BlockStreamer(list(model), CPU, pin=False, pack=True)
    flat = streamer.host[0].flat
    assert flat is not None and flat.numel() % 256 == 0
    base = flat.untyped_storage().data_ptr()
    for tensor in [*model[0].parameters(), *model[0].buffers()]:
        assert tensor.untyped_storage().data_ptr() == base  # every tensor is a view of the block buffer
    assert model[0].b.qweight.dtype == torch.uint8  # quantized bytes stream as stored


def test_blocks_run_out_of_order_still_correct() -> None:
    model, x = toy(4), torch.randn(2, 64, generator=gen(1))
    expected = [block(x) for block in model]
    BlockStreamer(list(model), CPU, pin=False, pack=True)
    for i in (2, 0, 3, 3, 1):
        assert torch.equal(model[i](x), expected[i])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_on_device_points_back_at_host_tensors(device: str) -> None:
    layer = nn.Linear(4, 4)
    before = layer.weight.data_ptr()
    with on_device([layer], torch.device(device)):
        assert layer.weight.device.type == device and layer.bias.device.type == device
    assert layer.weight.data_ptr() == before and layer.bias.device.type == "cpu"


@pytest.mark.parametrize("speed", ["reference", "eager"])
def test_place_dit_streams_either_dit_class(tiny_models, speed: str) -> None:
    module = load_dit(tiny_models / COMFY_FILES["dit"], dtype=torch.float32).module
    dit = accelerate(module, SpeedOptions(speed))
    x, t = torch.randn(1, 16, 4, 6, generator=gen(2)), torch.tensor([0.3])
    caption = [torch.randn(7, 32, generator=gen(3))]

    def run() -> torch.Tensor:
        if speed == "eager":
            return dit(x, t, caption)
        return dit(list(x.unsqueeze(2)), t, caption, return_dict=False)[0][0]

    expected = run()
    residency.place_dit(dit, STREAMED.residence(DIT), CPU)
    streamer = residency.streamer_of(dit)
    assert streamer is not None and len(streamer.order) == len(residency.dit_blocks(dit)) - 2
    assert torch.equal(run(), expected)
    residency.place_dit(dit, dataclasses.replace(STREAMED, dit="resident").residence(DIT), CPU)
    assert residency.streamer_of(dit) is None and torch.equal(run(), expected)


@pytest.mark.parametrize("speed", ["reference", "eager"])
def test_engine_with_streamed_plans_gives_the_same_image(tiny_models, speed: str) -> None:
    request = GenerationRequest("a cat", width=64, height=48, steps=2, seed=3, sampler="euler")
    paths = resolve_models(tiny_models)
    resident = run_request(Engine(SETTINGS.replace(speed=speed)), paths, request)
    engine = Engine(SETTINGS.replace(speed=speed, plan=STREAMED))
    streamed = run_request(engine, paths, request)
    assert torch.equal(streamed.latents, resident.latents)
    assert torch.equal(streamed.images, resident.images)
    model, clip, _ = engine.load_all(paths)
    assert residency.streamer_of(model.transformer) is not None
    assert residency.streamer_of(clip.component.module) is not None


def test_vae_tiling_is_scoped_to_one_call(tiny_models_fp32) -> None:
    vae = load_vae(tiny_models_fp32 / COMFY_FILES["vae"], dtype=torch.float32).module
    latent = torch.randn(1, 16, 24, 24, generator=gen(4))
    full = vae.decode(latent).sample
    with residency.vae_tiling(vae, True, tile=64):
        assert vae.use_tiling and vae.tile_latent_min_size == 8
        tiled = vae.decode(latent).sample
    assert not vae.use_tiling and vae.tile_sample_min_size == 1024
    assert tiled.shape == full.shape and not torch.equal(tiled, full)
    assert float((tiled - full).abs().mean()) < 0.5 * float(full.abs().mean())


def test_choose_resident_prefers_big_blocks_then_spreads() -> None:
    assert residency.choose_resident([5, 5, 9, 9, 1, 1, 1, 1, 1, 1], 2) == {2, 3}
    assert residency.choose_resident([1] * 8, 2) == {2, 6}
    assert residency.choose_resident([1] * 8, 0) == set()
    assert residency.choose_resident([3, 1, 1, 1], 4) == {0, 1, 2, 3}


def test_streaming_again_reuses_the_packed_copy() -> None:
    model, x = toy(3), torch.randn(2, 64, generator=gen(6))
    expected = model(x)
    first = BlockStreamer(list(model), CPU, pin=False, pack=True)
    flats = [first.host[i].flat for i in first.order]
    first.detach()
    second = BlockStreamer(list(model), CPU, pin=False, pack=True, resident={1})
    assert second.host[0].flat is flats[0] and second.host[2].flat is flats[2]  # no second host copy
    assert "_zturbo_host_block" not in model[1].__dict__  # resident now: its host copy is dropped
    assert torch.equal(model(x), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("pin", [True, False])
def test_streaming_on_cuda_with_side_stream_equals_resident(pin: bool) -> None:
    """The real thing: page-locked host buffers, a copy stream, events; several calls in a row."""
    from zturbo.runtime.offload import page_locked

    assert page_locked(1000).is_pinned()
    cuda = torch.device("cuda")
    model, x = toy(6), torch.randn(64, 64, generator=gen(7))
    expected = model.to(cuda)(x.to(cuda)).cpu()
    model.cpu()
    baseline = torch.cuda.memory_allocated()  # cuBLAS keeps its ~32 MiB workspace in torch's allocator
    streamer = BlockStreamer(list(model), cuda, pin=pin, resident={2})
    assert all(h.flat is None or h.flat.is_pinned() for h in streamer.host.values())
    for _ in range(4):
        assert torch.equal(model(x.to(cuda)).cpu(), expected)
    assert (
        torch.cuda.memory_allocated() - baseline
        < 3 * streamer.slot_bytes + sum(b.numel() * 4 for b in model[2].parameters()) + 2**20
    )


@pytest.mark.gpu
def test_engine_streamed_plan_on_cuda_matches_resident(tiny_models_fp32) -> None:
    request = GenerationRequest("a cat", width=64, height=48, steps=2, seed=3, sampler="euler")
    paths = resolve_models(tiny_models_fp32)
    settings = EngineSettings("cuda", "fp32")
    resident = run_request(Engine(settings), paths, request)
    plan = dataclasses.replace(ALL_STREAMED, pin_dit=True, pin_text_encoder=True, vae_tiled=False)
    engine = Engine(settings.replace(plan=plan))
    streamed = run_request(engine, paths, request)
    assert torch.allclose(streamed.latents, resident.latents, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_first_copy_waits_for_work_queued_on_memory_the_slots_reuse() -> None:
    """The slots are allocated on the compute stream, possibly from memory a queued kernel still writes
    (a just-freed activation or dequantized weight): the side-stream copy into them must wait for it.
    Here that kernel fills the memory with 0xFF bytes (NaN) after a long sleep."""
    cuda = torch.device("cuda")
    model, x = toy(4), torch.randn(64, 64, generator=gen(8)).to(cuda)
    expected = model.to(cuda)(x).cpu()
    streamer = BlockStreamer(list(model), cuda, pin=True)
    torch.cuda.synchronize()
    junk = [torch.empty(streamer.slot_bytes, dtype=torch.uint8, device=cuda) for _ in range(2)]
    reused = {t.data_ptr() for t in junk}
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time: the fills below are still queued when the hook runs
    for t in junk:
        t.fill_(255)
    del junk, t  # back to the compute stream's pool while the fills are pending
    out = model(x).cpu()
    assert {s.data_ptr() for s in streamer.slots} == reused, "the allocator did not reuse the freed memory"
    assert torch.equal(out, expected)
