"""`zturbo bench` system names and options that pick dtypes (the GPU rows themselves need a GPU)."""

from __future__ import annotations

from pathlib import Path

import torch

from zturbo.bench.cli import parse
from zturbo.bench.speed import system_dtype, system_weight_dtype, zturbo_modes
from zturbo.runtime.device import Placement
from zturbo.runtime.settings import EngineSettings


def test_fp16_and_fp32_systems_force_their_dtype():
    assert system_dtype("zturbo-fp16") == ("fp16", None)
    assert zturbo_modes("zturbo-fp16") == ("eager", "compile", "max")
    assert system_dtype("zturbo-fp32") == ("fp32", None) and "eager" in zturbo_modes("zturbo-fp32")
    assert system_dtype("zturbo-nobf16") == ("auto", False)
    assert system_dtype("zturbo-eager") == ("bf16", None) and system_weight_dtype("zturbo-fp16") == "default"


def test_a_gpu_without_bf16_can_be_acted_on_a_bf16_one():
    settings = EngineSettings("cpu", "auto", bf16=False)  # on a CPU `auto` stays fp32
    assert settings.placement.dit_dtype() == torch.float32
    placement = Placement(torch.device("cuda"), "auto", bf16=False)  # no CUDA needed: nothing is queried
    assert (placement.dit_dtype(), placement.vae_dtype()) == (torch.float16, torch.float32)
    assert placement.text_encoder_dtype(torch.device("cuda")) == torch.bfloat16


def test_memory_rows_take_a_dtype():
    args = parse(["--vram-plans", "8G", "--weights", "bf16", "--dtype", "fp16"], default_results=Path("r"))
    assert args.dtype == "fp16" and not args.no_bf16
    assert parse(["--dtype", "auto", "--no-bf16"], default_results=Path("r")).no_bf16
