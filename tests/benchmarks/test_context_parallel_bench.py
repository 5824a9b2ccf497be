"""benchmarks/context_parallel.py on the CPU: tiny model, 2 gloo processes, one small size, 2 steps.

Run as the lead runs it (a subprocess: spawn needs the worker importable by its module). Tests the
script (launch, timing, report), not the speed; the split output must match the single one within
tests/models/test_context_parallel.py's fp32 bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_benchmark_runs_on_cpu_and_reports(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "context_parallel.py"), "--gpus", "2"]
    command += ["--sizes", "64", "--steps", "2", "--out", str(tmp_path)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = tmp_path.glob("*-cpu-context_parallel.json")
    (row,) = json.loads(path.read_text(encoding="utf-8"))["rows"]
    assert row["gpus"] == 2 and row["size"] == 64 and row["single_s"] > 0 and row["split_s"] > 0
    assert row["rel_diff"] <= 1e-5
