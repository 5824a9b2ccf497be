"""`zturbo bench` system names and options that pick dtypes (the GPU rows themselves need a GPU)."""

from __future__ import annotations

from pathlib import Path

from zturbo.bench.cli import parse
from zturbo.bench.speed import system_dtype, system_weight_dtype, zturbo_modes


def test_fp16_and_fp32_systems_force_their_dtype():
    assert system_dtype("zturbo-fp16") == "fp16" and zturbo_modes("zturbo-fp16") == (
        "eager",
        "compile",
        "max",
    )
    assert system_dtype("zturbo-fp32") == "fp32" and "eager" in zturbo_modes("zturbo-fp32")
    assert system_dtype("zturbo-eager") == "bf16" and system_weight_dtype("zturbo-fp16") == "default"


def test_memory_rows_take_a_dtype():
    args = parse(["--vram-plans", "8G", "--weights", "bf16", "--dtype", "fp16"], default_results=Path("r"))
    assert args.dtype == "fp16"
    assert parse([], default_results=Path("r")).dtype == "bf16"
