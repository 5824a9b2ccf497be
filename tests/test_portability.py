"""The bit-equality checks also hold on the BLAS code paths of other CPUs (issue 12).

Two runs may be compared bit for bit only where they do the same arithmetic in the same order by
construction (tests/conftest.py). A check that holds only because of the kernel this machine's BLAS
happens to pick passes here and fails elsewhere: 11 did on an AMD EPYC. MKL can be sent down another
CPU's code path, so those checks are rerun here, in a fresh process (MKL reads the setting once):
- `MKL_ENABLE_INSTRUCTIONS=SSE4_2`: the fp32 GEMV rounds by the weight's 16-byte alignment, as on the
  AMD machine (a file-mapped weight and an aligned copy of it give different bits);
- `MKL_ENABLE_INSTRUCTIONS=AVX2` (an AVX2-only CPU): sgemm sums each dot product in another order for
  96 or more output rows than for 64 or fewer (a fused Q‖K‖V GEMM against the separate ones).
Without MKL (other CPUs, other torch builds) the variable would change nothing: skipped there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RERUNS = {
    "SSE4_2": [
        "tests/checkpoints/test_quantized_models.py::test_comfy_fp8_dit_equals_its_expansion[comfy_quant]",
        "tests/checkpoints/test_quantized_models.py::test_fp8_on_load_equals_quantize_to_fp8[fp8_e4m3fn-dtype0]",
        "tests/runtime/test_offload.py::test_place_dit_streams_either_dit_class",
        "tests/runtime/test_offload.py::test_engine_with_streamed_plans_gives_the_same_image",
    ],
    "AVX2": ["tests/quant/test_quant_concat.py::test_output_equals_the_parts_outputs_side_by_side"],
}


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch is built without MKL")
@pytest.mark.parametrize("instructions", list(RERUNS))
def test_exact_checks_hold_on_another_mkl_code_path(instructions: str) -> None:
    env = {**os.environ, "MKL_ENABLE_INSTRUCTIONS": instructions}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *RERUNS[instructions]]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
