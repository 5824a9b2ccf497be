"""benchmarks/enhance.py on the CPU with the tiny config, diffusers made unimportable (the GPU run
must not need it). Tests the script (paths, fixed lengths, report), not the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
NO_DIFFUSERS = (
    "import runpy, sys; sys.modules['diffusers'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_enhance_benchmark_runs_tiny_without_diffusers(tmp_path):
    script = ROOT / "benchmarks" / "enhance.py"
    args = ["--tiny", "--tokens", "8", "--host-tokens", "5", "--slot-tokens", "2", "--repeats", "1"]
    command = [sys.executable, "-c", NO_DIFFUSERS, str(script), *args, "--results", str(tmp_path)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = tmp_path.glob("*-cpu-enhance.json")
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["device"] == "cpu" and "--tiny" in report["command"] and report["date"]
    rows = {row["path"]: row for row in report["rows"]}
    assert {name: row["decode_tokens"] for name, row in rows.items()} == {
        "resident": 8, "streamed": 5, "streamed_gpu_decode": 2,
    }  # fmt: skip
    assert all(
        row["prompt_tokens"] > 30 and row["prefill_s"] > 0 and row["tokens_per_s"] > 0
        for row in rows.values()
    )
