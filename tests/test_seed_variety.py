"""Seed variety end to end on the tiny model: 0 is the plain path bit for bit; > 0 spreads seeds.

Metric: the mean pairwise L2 distance between the final latents of seeds 0-3. On the tiny random
model the starting noise dominates that distance (161.9 at 64×64, 4 steps, vs 6.3 between two prompts
at one seed), and the conditioning's share is small, so the spread grows by little in absolute terms:
measured +0.36 (×1.0022) at strength 1 on every step, +0.04 at strength 1 on the first 30%. Both sides
are deterministic fp32 CPU runs; different CPUs round ~1e-6 relative apart, far below the margins.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import torch

from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.errors import InputError
from zturbo.generate import model_files, run_request, save_generated
from zturbo.output.metadata import ModelFiles, parameters_text, parse_parameters
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.sampling.variety import SeedVariety

BASE = GenerationRequest(prompt="a red fox in the snow", width=64, height=64, steps=4, seed=0)


@pytest.fixture(scope="module")
def run(tiny_models_fp32):
    engine, paths = Engine(EngineSettings("cpu", "fp32")), resolve_models(tiny_models_fp32)
    return lambda request: run_request(engine, paths, request)


def spread(run, **fields) -> tuple[float, list[torch.Tensor]]:
    latents = [run(replace(BASE, seed=seed, **fields)).latents for seed in range(4)]
    return sum(float((a - b).norm()) for a, b in itertools.combinations(latents, 2)) / 6, latents


def test_variety_zero_is_the_plain_path_bit_for_bit(run, tiny_models_fp32, tmp_path, monkeypatch):
    off = run(BASE)

    def never(*_args):
        raise AssertionError("the perturbation ran at variety 0")

    monkeypatch.setattr(SeedVariety, "perturb", never)
    zero = run(replace(BASE, variety=0.0, variety_steps=0.9))
    assert torch.equal(zero.latents, off.latents)
    files = model_files(resolve_models(tiny_models_fp32), tiny_models_fp32)
    (a,), (b,) = save_generated(off, files, tmp_path / "off"), save_generated(zero, files, tmp_path / "zero")
    assert a.read_bytes() == b.read_bytes()


def test_variety_spreads_seeds_and_is_deterministic_per_seed(run):
    off, _ = spread(run)
    on_every_step, _ = spread(run, variety=1.0, variety_steps=1.0)
    on_first_steps, latents = spread(run, variety=1.0, variety_steps=0.3)
    assert on_every_step - off > 0.15  # measured +0.36
    assert on_first_steps - off > 0.015  # measured +0.04
    assert torch.equal(run(replace(BASE, seed=2, variety=1.0, variety_steps=0.3)).latents, latents[2])


def test_the_prompt_still_rules(run):
    plain, varied = run(BASE).latents, run(replace(BASE, variety=0.5)).latents
    other_prompt = run(replace(BASE, prompt="a city at night, neon signs")).latents
    moved, by_prompt = float((varied - plain).norm()), float((other_prompt - plain).norm())
    assert 0 < moved < by_prompt / 3  # measured 1.26 at strength 1 vs 6.26 for another prompt


def test_variety_is_recorded_in_the_parameters_and_read_back():
    files = ModelFiles("dit.safetensors", "te.safetensors", "vae.safetensors")
    text = parameters_text(replace(BASE, variety=0.4, variety_steps=0.5), files)
    assert "Variety: 0.4, Variety steps: 0.5" in text
    request, _ = parse_parameters(text)
    assert (request.variety, request.variety_steps) == (0.4, 0.5)
    assert "Variety" not in parameters_text(BASE, files)


@pytest.mark.parametrize(
    ("fields", "message"), [({"variety": -1.0}, "strength"), ({"variety_steps": 0.0}, "fraction")]
)
def test_bad_request_values_are_refused(fields, message):
    with pytest.raises(InputError, match=message):
        replace(BASE, **fields).validate(["res_multistep"], ["simple"])


def test_generate_refuses_a_bad_variety_before_loading(tiny_models_fp32, tmp_path):
    from typer.testing import CliRunner

    from zturbo.cli import app

    args = [
        "generate",
        "x",
        "--variety",
        "0.3",
        "--variety-steps",
        "2",
        "--models-dir",
        str(tiny_models_fp32),
    ]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert str(result.exception) == "variety: steps fraction must be above 0 and at most 1 (got 2.0)"
    assert not list(tmp_path.iterdir())


def test_generate_records_variety_and_from_reproduces_it(tiny_models, tmp_path):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from zturbo.cli import app

    common = ["--models-dir", str(tiny_models), "--out", str(tmp_path), "--device", "cpu"]
    first = CliRunner().invoke(
        app, ["generate", "一只猫", "--width", "32", "--height", "32", "--steps", "2", "--seed", "4",
              "--variety", "0.5", "--variety-steps", "0.5", *common],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    (made,) = [line for line in first.stdout.split() if line.endswith(".png")]
    again = CliRunner().invoke(app, ["generate", "--from", made, *common])
    assert again.exit_code == 0, again.output
    (remade,) = [line for line in again.stdout.split() if line.endswith(".png")]
    with Image.open(made) as a, Image.open(remade) as b:
        assert "Variety: 0.5, Variety steps: 0.5" in a.info["parameters"] == b.info["parameters"]
        assert json.loads(a.info["prompt"])["40"]["class_type"] == "ZTurboSeedVariety"
        assert np.array_equal(np.asarray(a), np.asarray(b))
