"""GPU benchmark: zturbo next to diffusers (eager and compiled) on full-size random weights.

    python benchmarks/gpu.py --sizes 1024x1024 --batches 1 --systems zturbo,diffusers-eager

Systems: zturbo (speed modes reference + eager), zturbo-compiled (compile + max), zturbo-<mode>,
diffusers-eager, diffusers-compiled. Each zturbo row carries its quality guard in `extra`.

Small-GPU rows instead (issue 6): `--vram-plans 4G,6G,8G,12G --weights bf16,q8_0,q4_0` runs each
weights file unconstrained and under each budget (capped with set_per_process_memory_fraction), at the
first of --sizes, batch 1; rows carry `vram_plan` and `mode` (= weights) and go to
benchmarks/results/<date>-<device>-memory.json.

Prints a table and writes benchmarks/results/<date>-<device>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zturbo.bench import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/zturbo-bench-models"))
    parser.add_argument("--sizes", default="1024x1024")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--systems", default="zturbo,zturbo-compiled,diffusers-eager,diffusers-compiled")
    parser.add_argument("--out", type=Path, default=Path("/tmp/zturbo-bench-out"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--compile-cache", type=Path, default=None, help="inductor cache folder")
    parser.add_argument("--vram-plans", default="", help="e.g. 4G,6G,8G,12G: run the small-GPU rows")
    parser.add_argument("--weights", default="bf16,q8_0,q4_0", help="DiT weights for --vram-plans")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per --vram-plans row")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if args.vram_plans:
        from zturbo.bench_memory import run_memory

        run_memory(
            args.models_dir,
            args.vram_plans.split(","),
            args.weights.split(","),
            steps=args.steps,
            size=sizes[0],
            out_dir=args.out,
            results_dir=args.results,
            repeats=args.repeats,
        )
        return
    run(
        args.models_dir,
        sizes,
        [int(b) for b in args.batches.split(",")],
        args.steps,
        args.systems.split(","),
        args.out,
        args.results,
        compile_cache=args.compile_cache,
    )


if __name__ == "__main__":
    main()
