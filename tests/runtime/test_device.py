"""Device/dtype choice per GPU kind (bf16 where native, else the fp16-safe DiT, fp32 VAE), and NaNs
reported with the step they appeared at."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.errors import GenerationError, InputError
from zturbo.generate import run_request
from zturbo.request import GenerationRequest
from zturbo.runtime.device import Placement, bf16_native
from zturbo.runtime.memory import GIB, Workload, plan_memory, usable_vram
from zturbo.runtime.memory_manager import MemoryManager, released_size
from zturbo.runtime.settings import EngineSettings

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
CUDA, MPS = torch.device("cuda"), torch.device("mps")
# (device, fake properties) -> (DiT, text encoder, VAE) under --dtype auto
AUTO = {
    "rtx4090 (sm89)": (CUDA, {"major": 8}, None, (BF16, BF16, BF16)),
    "rtx2070 (sm75)": (CUDA, {"major": 7}, None, (FP16, BF16, FP32)),
    "gtx1080 (sm61)": (CUDA, {"major": 6}, None, (FP16, BF16, FP32)),
    "rx6800 (gfx1030)": (CUDA, {"major": 10, "gcnArchName": "gfx1030"}, "6.2", (FP16, BF16, FP32)),
    "rx7900 (gfx1100)": (CUDA, {"major": 11, "gcnArchName": "gfx1100"}, "6.2", (BF16, BF16, BF16)),
    "mi250 (gfx90a)": (
        CUDA,
        {"major": 9, "gcnArchName": "gfx90a:sramecc+:xnack-"},
        "6.2",
        (BF16, BF16, BF16),
    ),
    "mi50 (gfx906)": (CUDA, {"major": 9, "gcnArchName": "gfx906"}, "6.2", (FP16, BF16, FP32)),
    "mps macOS 14": (MPS, None, True, (BF16, BF16, BF16)),
    "mps macOS 13": (MPS, None, False, (FP16, FP16, FP32)),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(props: dict | None, hip_or_macos) -> None:
        if props is not None:
            monkeypatch.setattr(
                torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(**props)
            )
            monkeypatch.setattr(torch.version, "hip", hip_or_macos)
        else:
            monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: hip_or_macos)

    return install


@pytest.mark.parametrize("gpu", AUTO, ids=list(AUTO))
def test_auto_dtypes_per_gpu(fake_gpu, gpu):
    device, props, extra, expected = AUTO[gpu]
    fake_gpu(props, extra)
    placement = Placement(device)
    got = (placement.dit_dtype(), placement.text_encoder_dtype(device), placement.vae_dtype())
    assert got == expected
    assert placement.fp16_dit == (expected[0] == FP16)
    assert bf16_native(device) == (expected[0] == BF16)


def test_explicit_dtypes_on_a_gpu_without_bf16(fake_gpu):
    fake_gpu({"major": 7}, None)
    bf16 = Placement(CUDA, "bf16")  # asked for: the DiT and encoder emulate it, the VAE cannot
    assert (bf16.dit_dtype(), bf16.text_encoder_dtype(CUDA), bf16.vae_dtype()) == (BF16, BF16, FP32)
    fp32 = Placement(CUDA, "fp32")
    assert (fp32.dit_dtype(), fp32.text_encoder_dtype(CUDA), fp32.vae_dtype()) == (FP32, FP32, FP32)


def test_fp16_on_a_bf16_gpu_changes_only_the_dit(fake_gpu):
    """How the benchmark forces the fp16-safe path on an H100/H200."""
    fake_gpu({"major": 9}, None)
    fp16 = Placement(CUDA, "fp16")
    assert (fp16.dit_dtype(), fp16.text_encoder_dtype(CUDA), fp16.vae_dtype()) == (FP16, BF16, BF16)
    assert "fp16-safe" in fp16.describe()


def test_the_planner_counts_the_fp32_residual_and_the_fp32_vae(fake_gpu):
    fake_gpu({"major": 7}, None)
    manager = MemoryManager(Placement(CUDA), vram=None)
    precision = manager.precision()
    assert (precision.dit_bytes, precision.text_encoder_bytes, precision.vae_bytes) == (2, 2, 4)
    assert precision.dit_compute == "fp16"
    sizes = {k: released_size(k, 2) for k in (DIT, TEXT_ENCODER)} | {VAE: released_size(VAE, 4)}
    budget, name = usable_vram("8G", CUDA)
    bf16 = dict(plan_memory(sizes, Workload(), budget=budget, name=name, ram=64 * GIB).phases)
    safe = dict(
        plan_memory(sizes, Workload(), budget=budget, name=name, ram=64 * GIB, precision=precision).phases
    )
    assert safe["sample"] > bf16["sample"] and safe["decode"] > bf16["decode"]
    manager.set_dit_compute("fp32")  # the watchdog's fallback: all-fp32 activations
    assert manager.precision().dit_compute == "fp32"


def test_cpu_defaults_to_fp32():
    assert Placement(torch.device("cpu")).dit_dtype() == torch.float32
    assert Placement(torch.device("cpu"), "bf16").dit_dtype() == torch.bfloat16


def test_fp16_is_the_fp16_safe_path_and_never_for_the_encoder():
    placement = Placement(torch.device("cpu"), "fp16")
    assert placement.dit_dtype() == torch.float16 and placement.fp16_dit
    assert placement.text_encoder_dtype(torch.device("cpu")) == torch.bfloat16


def test_reference_speed_has_no_fp16_path():
    with pytest.raises(InputError, match="no fp16-safe path"):
        EngineSettings("cpu", "fp16", speed="reference")


def test_bad_choices_are_named():
    with pytest.raises(InputError, match="device must be one of auto, cuda, mps, cpu"):
        Placement.create("tpu")
    with pytest.raises(InputError, match="dtype must be one of"):
        Placement.create("cpu", "int4")


def test_nan_latents_are_reported_with_the_step(tiny_models):
    engine = Engine(EngineSettings("cpu", "fp32"))
    paths = resolve_models(tiny_models)
    model = engine.load_dit(paths.dit)
    calls = {"n": 0}
    original = model.transformer.forward

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        if calls["n"] == 3:
            out[0][0].fill_(float("nan"))
        return out

    model.transformer.forward = poisoned
    try:
        request = GenerationRequest("a cat", width=32, height=32, steps=4, sampler="euler")
        with pytest.raises(GenerationError, match=r"NaN/inf values at model call 3 \(sigma 0\.7500\)"):
            run_request(engine, paths, request)
    finally:
        del model.transformer.forward
