"""Time to first image of a fresh process: cold compile cache, then the same command again (warm cache).

    python benchmarks/second_process.py [--speed max] [--weight-dtype default] [--models-dir ...]

Each run is a new `python -m zturbo generate` process timed from launch to exit: Python start-up,
reading the weights (from the page cache after the first run: the files were just written or read),
compiling (or loading compiled code from the persistent cache), one 1024² image and its PNG. Run 1
uses an empty cache folder; run 2 the one run 1 filled. Prints a table and writes
benchmarks/results/<date>-<device>-second_process.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from zturbo.bench.harness import PROMPT, write_full_size_models


def generate_once(args: argparse.Namespace, cache: Path, out: Path) -> dict:
    command = [
        sys.executable, "-m", "zturbo", "generate", PROMPT,
        "--models-dir", str(args.models_dir), "--out", str(out), "--seed", "1",
        "--speed", args.speed, "--weight-dtype", args.weight_dtype,
    ]  # fmt: skip
    env = {**os.environ, "ZTURBO_COMPILE_CACHE": str(cache)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8")
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"generate failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {"seconds": round(seconds, 2), "png": done.stdout.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/zturbo-bench-models"))
    parser.add_argument("--speed", default="max")
    parser.add_argument("--weight-dtype", default="default")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    write_full_size_models(args.models_dir)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cache, out = Path(scratch) / "inductor", Path(scratch) / "out"
        for label in ("cold cache", "warm cache"):
            row = {"run": label, "speed": args.speed, "weight_dtype": args.weight_dtype}
            row.update(generate_once(args, cache, out))
            rows.append(row)
            print(f"{label:<12}{row['seconds']:>8.1f} s  {row['png']}", flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    today = dt.date.today().isoformat()
    args.results.mkdir(parents=True, exist_ok=True)
    path = (
        args.results
        / f"{today}-{device.replace(' ', '_')}-second_process-{args.speed}-{args.weight_dtype}.json"
    )
    data = {"device": device, "date": today, "torch": torch.__version__, "rows": rows}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
