"""GPU benchmark: zturbo next to diffusers (eager and compiled) on full-size random weights.

    python benchmarks/gpu.py --sizes 1024x1024 --batches 1 --systems zturbo,diffusers-eager

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
    parser.add_argument("--systems", default="zturbo,diffusers-eager,diffusers-compiled")
    parser.add_argument("--out", type=Path, default=Path("/tmp/zturbo-bench-out"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    run(
        args.models_dir,
        sizes,
        [int(b) for b in args.batches.split(",")],
        args.steps,
        args.systems.split(","),
        args.out,
        args.results,
    )


if __name__ == "__main__":
    main()
