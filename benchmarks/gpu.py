"""GPU benchmark: zturbo next to diffusers (eager and compiled) on full-size random weights.

    python benchmarks/gpu.py --sizes 1024x1024 --batches 1 --systems zturbo,diffusers-eager
    python benchmarks/gpu.py --vram-plans 4G,6G,8G,12G --weights bf16,q8_0,q4_0

Same as `zturbo bench`, but results go to benchmarks/results/ (see zturbo/bench_cli.py for the options).
"""

from __future__ import annotations

from pathlib import Path

from zturbo.bench.cli import main

if __name__ == "__main__":
    main(default_results=Path(__file__).parent / "results")
