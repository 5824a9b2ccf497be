"""Arguments of `zturbo bench` and `benchmarks/gpu.py` (one parser for both).

Systems: zturbo (speed modes reference + eager), zturbo-compiled (compile + max), zturbo-<mode>,
zturbo-fp8 (fp8_e4m3fn_fast weights; compile + max), zturbo-cache (compile + --step-cache),
zturbo-fp16 (the fp16-safe DiT path, forced on a bf16 GPU: eager + compile + max), zturbo-fp32
(fp32 DiT: eager + max), zturbo-nobf16 (all the dtypes of a GPU without bf16: fp16-safe DiT, fp32 VAE;
eager + max), diffusers-eager, diffusers-compiled. Each zturbo row carries its quality guard
and how its DiT computes (`dit_computes_in`) in `extra`. fp16-safe vs bf16 vs fp32 at 1024²:
--systems zturbo-eager,zturbo-fp16,zturbo-fp32 (add zturbo-compiled for bf16 compile + max).

Small-GPU rows instead: `--vram-plans 4G,6G,8G,12G --weights bf16,q8_0,q4_0` runs each weights file
unconstrained and under each budget (capped with set_per_process_memory_fraction), at the first of
--sizes, batch 1; rows carry `vram_plan` and `mode` (= weights) and go to <date>-<device>-memory.json.
`--dtype fp16` runs those rows on the fp16-safe path, `--dtype auto --no-bf16` with all of a GPU without
bf16's dtypes (e.g. --vram-plans 8G --weights bf16,q4_0 --dtype auto --no-bf16).

Prints a table and writes <results>/<date>-<device>.json. Needs a CUDA GPU, diffusers, and ~35 GB of
disk for the full-size random-weight files it writes (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from zturbo.errors import InputError


def parse(argv: Sequence[str] | None, default_results: Path) -> argparse.Namespace:
    scratch = Path(tempfile.gettempdir())
    parser = argparse.ArgumentParser(
        prog="zturbo bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=scratch / "zturbo-bench-models",
        help="where the full-size random-weight files are written (reused)",
    )
    parser.add_argument("--sizes", default="1024x1024")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--systems", default="zturbo,zturbo-compiled,diffusers-eager,diffusers-compiled")
    parser.add_argument("--out", type=Path, default=scratch / "zturbo-bench-out", help="images written")
    parser.add_argument("--results", type=Path, default=default_results)
    parser.add_argument("--compile-cache", type=Path, default=None, help="inductor cache folder")
    parser.add_argument(
        "--step-cache", type=float, default=0.12, help="threshold of the zturbo-cache system's step cache"
    )
    parser.add_argument("--vram-plans", default="", help="e.g. 4G,6G,8G,12G: run the small-GPU rows")
    parser.add_argument("--weights", default="bf16,q8_0,q4_0", help="DiT weights for --vram-plans")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per --vram-plans row")
    parser.add_argument(
        "--dtype",
        default="bf16",
        choices=("auto", "bf16", "fp16", "fp32"),
        help="engine dtype of the --vram-plans rows",
    )
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="--vram-plans rows act as on a GPU without bf16 (with --dtype auto: fp16-safe DiT, fp32 VAE)",
    )
    return parser.parse_args(argv)


def _size(text: str) -> tuple[int, int]:
    """A `--sizes` entry "WxH" → (width, height)."""
    parts = text.split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--sizes: expected WxH entries like 1024x1024 (got {text!r})")
    return int(parts[0]), int(parts[1])


def main(argv: Sequence[str] | None = None, default_results: Path = Path("bench-results")) -> None:
    args = parse(argv, default_results)
    sizes = [_size(s) for s in args.sizes.split(",")]
    if args.vram_plans:
        from zturbo.bench.memory import run_memory

        run_memory(
            args.models_dir,
            args.vram_plans.split(","),
            args.weights.split(","),
            steps=args.steps,
            size=sizes[0],
            out_dir=args.out,
            results_dir=args.results,
            repeats=args.repeats,
            dtype=args.dtype,
            bf16=False if args.no_bf16 else None,
        )
        return
    from zturbo.bench.harness import run

    run(
        args.models_dir,
        sizes,
        [int(b) for b in args.batches.split(",")],
        args.steps,
        args.systems.split(","),
        args.out,
        args.results,
        compile_cache=args.compile_cache,
        step_cache=args.step_cache,
    )
