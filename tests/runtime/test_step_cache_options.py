"""The step cache as an option: SpeedOptions, the engine (one cache per sampling run), the compiled
block function, max mode, and `zturbo generate --step-cache`.

The tiny DiT's rel values between steps are ~1 (random weights), so a threshold of 1e9 is used to make
every call skip that may: a full call runs 6 blocks, a skipping one 5. With the schedule, the last step's
call always runs in full (`STEP_CACHE_FULL_LAST_STEPS`).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from typer.testing import CliRunner

from zturbo.checkpoints.layout import resolve_models
from zturbo.cli import app
from zturbo.engine import Engine
from zturbo.errors import InputError
from zturbo.generate import run_request
from zturbo.models.denoiser import STEP_CACHE_FULL_LAST_STEPS
from zturbo.models.zimage_dit import StepCache, ZImageDiT, call_block
from zturbo.request import GenerationRequest
from zturbo.runtime import residency
from zturbo.runtime.compile import SpeedOptions, accelerate
from zturbo.runtime.memory import MemoryPlan
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.synthetic import TINY_DIT, build_random_dit

FULL = 2 * TINY_DIT.n_refiner_layers + TINY_DIT.n_layers
SKIPPED = 2 * TINY_DIT.n_refiner_layers + 1
STEPS = 4


def request(cfg: float = 1.0, batch: int = 1, seed: int = 7) -> GenerationRequest:
    return GenerationRequest(
        "a lighthouse at dusk",
        negative="blurry" if cfg != 1.0 else "",
        width=48,
        height=32,
        steps=STEPS,
        cfg=cfg,
        sampler="euler",
        scheduler="simple",
        seed=seed,
        batch=batch,
    )


def count_blocks(engine: Engine, paths) -> list[int]:
    """Wrap the engine's loaded DiT's block function; the returned list grows by one per block call."""
    dit = engine.load_dit(paths.dit).transformer
    assert isinstance(dit, ZImageDiT)
    counter: list[int] = []
    inner = dit.run_block

    def counting(block, *args):
        counter.append(1)
        return inner(block, *args)

    dit.run_block = counting
    return counter


# --- options ---


@pytest.mark.parametrize("value", [-0.1, -1e-9, math.nan, math.inf])
def test_bad_step_cache_values_are_refused(value):
    with pytest.raises(InputError, match="step cache must be a finite number >= 0"):
        SpeedOptions(step_cache=value)


def test_step_cache_is_off_by_default_and_not_for_reference():
    assert SpeedOptions().step_cache == 0.0
    with pytest.raises(InputError, match="needs zturbo's DiT"):
        SpeedOptions("reference", step_cache=0.1)
    assert SpeedOptions("reference").step_cache == 0.0


def test_the_step_cache_turns_whole_forward_graphs_off():
    assert SpeedOptions("max").graphs
    on = SpeedOptions("max", step_cache=0.12)
    assert on.graphs_requested and not on.graphs and on.compiles  # compiled blocks stay
    assert not SpeedOptions("eager", cuda_graphs=True, step_cache=0.12).graphs


# --- the engine ---


@pytest.fixture(scope="module")
def paths(tiny_models_fp32):
    return resolve_models(tiny_models_fp32)


@pytest.fixture(scope="module")
def plain_engine():
    return Engine(EngineSettings("cpu", "fp32"))


def test_engine_threshold_zero_is_bit_identical(paths, plain_engine):
    off = Engine(EngineSettings("cpu", "fp32", speed="eager", step_cache=0.0))
    blocks = count_blocks(off, paths)
    got = run_request(off, paths, request())
    assert len(blocks) == STEPS * FULL
    assert torch.equal(got.latents, run_request(plain_engine, paths, request()).latents)


@pytest.mark.parametrize(("cfg", "batch"), [(1.0, 1), (2.5, 1), (1.0, 2)])
def test_engine_state_does_not_leak_between_jobs(paths, caplog, cfg, batch):
    """Two jobs on one engine: each starts with an empty cache (first call in full), skips the same
    calls and gives the same latents; the engine logs the count."""
    engine = Engine(EngineSettings("cpu", "fp32", speed="eager", step_cache=1e9))
    blocks = count_blocks(engine, paths)
    skipped = STEPS - 1 - STEP_CACHE_FULL_LAST_STEPS
    per_job = (STEPS - skipped) * FULL + skipped * SKIPPED
    results = []
    with caplog.at_level(logging.INFO, logger="zturbo.engine"):
        for job in range(2):
            results.append(run_request(engine, paths, request(cfg, batch)))
            assert len(blocks) == per_job * (job + 1)
    assert caplog.text.count(f"step cache: skipped {skipped} of {STEPS} model calls") == 2
    assert torch.equal(results[0].latents, results[1].latents)
    assert all(torch.isfinite(r.latents).all() and torch.isfinite(r.images).all() for r in results)


def test_engine_with_cache_differs_from_exact_but_stays_finite(paths, plain_engine):
    cached = Engine(EngineSettings("cpu", "fp32", speed="eager", step_cache=1e9))
    got = run_request(cached, paths, request(2.5)).latents
    exact = run_request(plain_engine, paths, request(2.5)).latents
    assert torch.isfinite(got).all() and not torch.equal(got, exact)


@pytest.mark.parametrize("resident_blocks", [0, 2])
def test_streamed_blocks_with_skips_equal_resident(tiny_models, resident_blocks):
    """Skipped layers never reach the block streamer's hooks; the next call's first block then lands in
    the slot the prefetch of layer 1 used (CPU: synchronous copies, same slot logic).

    The bf16 files, computed in fp32: every weight is a fresh cast on both sides, as the streamed
    copies are, so the comparison is exact by construction (an fp32 file's weights would stay mapped
    at the file's byte offsets, which MKL's GEMV can round differently: tests/conftest.py)."""
    paths = resolve_models(tiny_models)
    settings = EngineSettings("cpu", "fp32", speed="eager", step_cache=1e9)
    resident = run_request(Engine(settings), paths, request(2.5)).latents
    plan = MemoryPlan(
        level="dit-streamed", text_encoder="streamed", dit="streamed", dit_resident_blocks=resident_blocks
    )
    streamed = Engine(settings.replace(plan=plan))
    for _ in range(2):
        assert torch.equal(run_request(streamed, paths, request(2.5)).latents, resident)
    assert residency.streamer_of(streamed.load_dit(paths.dit).transformer) is not None


# --- compiled blocks ---


@pytest.fixture
def compile_cache(request, monkeypatch):
    # One cache per CPU capability: with torch 2.13, kernels cached by a process using AVX-512 and then
    # loaded by one under ATEN_CPU_CAPABILITY=avx2 made the compiled blocks return NaN.
    capability = torch.backends.cpu.get_cpu_capability().lower()
    folder = request.config.cache.mkdir(f"zturbo-inductor-{capability}")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    try:
        torch.compile(lambda a: a * 2 + 1, dynamic=False)(torch.ones(3))
    except Exception as exc:  # no C++ compiler, unsupported platform...
        pytest.skip(f"torch.compile does not work on this machine: {exc}")
    return folder


def test_compiled_blocks_with_the_step_cache_match_eager(compile_cache):
    model, state_dict = build_random_dit(TINY_DIT, seed=3)
    model.load_state_dict(state_dict, assign=True)
    dit = accelerate(model.eval(), SpeedOptions("eager"))
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 16, 12, generator=gen), torch.rand(2, generator=gen)
    captions = [torch.randn(n, TINY_DIT.cap_feat_dim, generator=gen) for n in (20, 45)]
    inputs = [(x + 0.1 * i * torch.randn(x.shape, generator=gen), t * (1 - 0.1 * i)) for i in range(3)]

    def run(cache: StepCache) -> list[torch.Tensor]:
        with torch.no_grad():
            return [dit(xi, ti, captions, step_cache=cache) for xi, ti in inputs]

    eager_cache = StepCache(1e9)
    eager = run(eager_cache)
    options = SpeedOptions("compile", cache_dir=compile_cache, step_cache=1e9)
    assert accelerate(dit, options) is dit and dit.run_block is not call_block
    compiled_cache = StepCache(1e9)
    compiled = run(compiled_cache)
    dit.run_block = call_block
    assert compiled_cache.skipped == eager_cache.skipped == 2
    for a, b in zip(compiled, eager, strict=True):
        assert float((a - b).norm() / b.norm()) <= 1e-5


# --- CLI ---

runner = CliRunner()


def generate_args(tiny_models, out, *extra: str) -> list[str]:
    return [
        "generate",
        "a cat",
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "3",
        "--seed",
        "1",
        "--models-dir",
        str(tiny_models),
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


def test_cli_step_cache_reaches_the_engine(tiny_models, tmp_path, caplog, monkeypatch):
    import zturbo.engine

    seen: list[SpeedOptions] = []
    real_engine = zturbo.engine.Engine

    def engine(settings, **kwargs):
        seen.append(settings.speed_options)
        return real_engine(settings, **kwargs)

    monkeypatch.setattr(zturbo.engine, "Engine", engine)
    with caplog.at_level(logging.INFO, logger="zturbo.engine"):
        result = runner.invoke(
            app, generate_args(tiny_models, tmp_path, "--step-cache", "1e9"), catch_exceptions=False
        )
    assert result.exit_code == 0, result.output
    assert seen == [SpeedOptions("eager", step_cache=1e9)]
    assert "step cache: skipped 1 of 3 model calls" in caplog.text  # first and last step in full


def test_cli_step_cache_defaults_off_and_rejects_negative_values(tiny_models, tmp_path, monkeypatch):
    import zturbo.engine

    seen: list[SpeedOptions] = []
    real_engine = zturbo.engine.Engine
    monkeypatch.setattr(
        zturbo.engine, "Engine", lambda settings: seen.append(settings.speed_options) or real_engine(settings)
    )
    assert runner.invoke(app, generate_args(tiny_models, tmp_path)).exit_code == 0
    assert seen == [SpeedOptions("eager")] and seen[0].step_cache == 0.0
    bad = runner.invoke(app, generate_args(tiny_models, tmp_path, "--step-cache", "-0.5"))
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)
    assert "step cache must be a finite number >= 0" in str(bad.exception)
    reference = runner.invoke(
        app, generate_args(tiny_models, tmp_path, "--step-cache", "0.1", "--speed", "reference")
    )
    assert "needs zturbo's DiT" in str(reference.exception)
    assert len(seen) == 1  # refused before any engine was built
    help_text = runner.invoke(app, ["generate", "--help"]).stdout
    assert "--step-cache" in help_text and "Lossy" in help_text
