"""Context parallel (Ulysses) on CPU with gloo: 2 and 3 processes against one, one spawn for the module.

A 5-head tiny DiT, so both 2 (3+2 heads) and 3 (2+2+1) processes get uneven head groups, and a
sequence of 64 image + 64 caption tokens that 3 ranks split unevenly (43, 43, 42).

What is bit-equal and what is not. The all-to-alls and the gather only move values. Per token, the
norms, modulation, RoPE and the SiLU are elementwise, and SDPA computes each (sample, head) on its own,
so they do the same arithmetic in both runs. The GEMMs (QKV, out, W13, W2) see s/G rows instead of s:
the CPU BLAS may pick another blocking of the reduction for another row count, i.e. reorder a sum
of K products. Two orders of one fp32 dot product differ by at most 2·γ_K·Σ|a_i w_i| (γ_K = K·u,
u = 2⁻²⁴); with K ≤ 4·dim = 640 and |Σ a_i w_i| ≈ Σ|a_i w_i| / √K for random weights that is
≤ 2·640·6e-8·√640 ≈ 2e-3 relative per GEMM output at worst, ≈ 1e-6 typically (random-sign rounding
errors add like √K·u). The 2 main layers' 8 GEMMs feed residual sums and post-norms that do not
amplify (RMSNorm rescales, |tanh(gate)| < 1), so the output's relative error (‖Δ‖/‖ref‖) stays
under PARITY = 1e-5, the bound test_zimage_dit.py uses for the same kind of reordering (fused vs
split GEMMs). The 8-step image: each Euler step x ← x + (σ'−σ)·v is a contraction-free sum of the
model's outputs, so its error is at most the sum of 8 steps' errors: IMAGE_PARITY = 8·PARITY.
Measured here (MKL, AVX2): 0, i.e. bit-equal; the bound is what other CPUs/BLAS builds may need.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from zturbo.models.context_parallel import ContextParallel, ParallelDiT, even_split, follow
from zturbo.models.zimage_convert import from_diffusers
from zturbo.models.zimage_dit import DEFAULT_SDPA_BACKENDS
from zturbo.runtime.context_launch import launch
from zturbo.testing.synthetic import TINY_DIT, build_random_dit

PARITY = 1e-5
IMAGE_PARITY = 8 * PARITY
CONFIG = replace(TINY_DIT, dim=160, n_heads=5, n_kv_heads=5)  # head_dim 32 = sum(axes_dims)
CASES = {"one": [7], "batch": [7, 40]}  # caption lengths; the batch has a key mask (32 vs 64 padded)
STEPS = 8


def build_dit():
    model, state_dict = build_random_dit(CONFIG, seed=3)
    model.load_state_dict(state_dict, assign=True)
    return from_diffusers(model.eval())


def case_inputs(lengths: list[int]):
    gen = torch.Generator().manual_seed(len(lengths))
    x = torch.randn(len(lengths), 16, 16, 16, generator=gen)  # 8×8 = 64 image tokens
    t = torch.rand(len(lengths), generator=gen)
    return x, t, [torch.randn(n, CONFIG.cap_feat_dim, generator=gen) for n in lengths]


def sample(model, lengths: list[int]) -> torch.Tensor:
    """8 Euler steps through the real denoiser and sampler (the latent the VAE decodes on rank 0)."""
    from zturbo.models.denoiser import ZImageDenoiser
    from zturbo.sampling.samplers import get_sampler
    from zturbo.sampling.schedules import get_sigmas

    x, _, captions = case_inputs(lengths)
    denoiser = ZImageDenoiser(model, captions, None, cfg=1.0)
    return get_sampler("euler")(denoiser, x, get_sigmas("simple", STEPS, shift=3.0))


def outputs(model) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = {name: model(*case_inputs(lengths)) for name, lengths in CASES.items()}
        out["image"] = sample(model, CASES["batch"])
    return out


def worker(rank: int, world: int, device: torch.device, dit, result: str) -> None:
    """`dit` comes from the test process (torch.multiprocessing shares its tensors): no diffusers import here."""
    dit.set_sdpa_backends(DEFAULT_SDPA_BACKENDS)  # the enum does not pickle; CPU SDPA ignores them anyway
    groups = {2: dist.new_group([0, 1]), 3: None}  # every rank creates every group
    reference = outputs(dit) if rank == 0 else {}
    report: dict[str, dict] = {}
    for size, group in groups.items():
        if rank >= size:
            continue
        context = ContextParallel(group)
        if rank != 0:
            follow(dit, context)
            continue
        parallel = ParallelDiT(dit, context)
        got = outputs(parallel)
        parallel.stop()
        dit.set_context_parallel(None)
        report[str(size)] = {name: compare(got[name], ref) for name, ref in reference.items()}
    if rank == 0:
        Path(result).write_text(json.dumps(report), encoding="utf-8")


def compare(got: torch.Tensor, ref: torch.Tensor) -> dict:
    return {
        "rel": float((got - ref).norm() / ref.norm()),
        "bit_equal": bool(torch.equal(got, ref)),
        "finite": bool(torch.isfinite(got).all()),
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("cp") / "report.json"
    dit = build_dit()
    dit.set_sdpa_backends(())
    launch(worker, 3, dit, str(path), backend="gloo")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("size", ["2", "3"])
@pytest.mark.parametrize("case", list(CASES))
def test_dit_output_matches_one_process(report, size, case):
    result = report[size][case]
    assert result["finite"]
    assert result["rel"] <= PARITY, result


@pytest.mark.parametrize("size", ["2", "3"])
def test_eight_step_image_matches_one_process(report, size):
    result = report[size]["image"]
    assert result["finite"]
    assert result["rel"] <= IMAGE_PARITY, result


def test_head_and_sequence_splits_are_uneven_here():
    assert even_split(CONFIG.n_heads, 2) == [3, 2] and even_split(CONFIG.n_heads, 3) == [2, 2, 1]
    assert even_split(30, 4) == [8, 8, 7, 7]  # Z-Image's 30 heads on 4 GPUs
    assert even_split(128, 3) == [43, 43, 42]
