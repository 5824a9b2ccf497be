"""The first-block step cache (`StepCache`) on the tiny DiT, and the denoiser that owns it.

The tiny DiT has 2 noise-refiner, 2 context-refiner and 2 main layers: a full forward runs 6 blocks, a
skipping one 5 (layer 1 is the only one skipped). Everything here is fp32 on the CPU and deterministic.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from zturbo.models.denoiser import ZImageDenoiser
from zturbo.models.zimage_convert import from_diffusers
from zturbo.models.zimage_dit import StepCache, ZImageDiT, call_block
from zturbo.runtime.compile import GraphedDiT
from zturbo.testing.synthetic import TINY_DIT, build_random_dit

CAP_DIM = TINY_DIT.cap_feat_dim
REFINERS = 2 * TINY_DIT.n_refiner_layers
FULL = REFINERS + TINY_DIT.n_layers
SKIPPED = REFINERS + 1


def reference_dit(seed: int = 3) -> torch.nn.Module:
    model, state_dict = build_random_dit(TINY_DIT, seed=seed)
    model.load_state_dict(state_dict, assign=True)
    return model.eval()


class Counted:
    """A ZImageDiT whose block calls are counted (per forward: `blocks` grows by 6 or 5)."""

    def __init__(self, seed: int = 3) -> None:
        self.dit = from_diffusers(reference_dit(seed))
        self.blocks = 0

        def counting(block, *args):
            self.blocks += 1
            return call_block(block, *args)

        self.dit.run_block = counting

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            return self.dit(*args, **kwargs)


def inputs(batch: int, size: tuple[int, int], lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, t = torch.randn(batch, 16, *size, generator=gen), torch.rand(batch, generator=gen)
    return x, t, [torch.randn(n, CAP_DIM, generator=gen) for n in lengths]


def nudged(x: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    return x + eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("threshold", [0.0, -1.0, math.nan, math.inf])
def test_threshold_must_be_positive_and_finite(threshold):
    with pytest.raises(ValueError, match="finite number > 0"):
        StepCache(threshold)


def test_a_cache_that_never_skips_is_bit_identical_to_none():
    """The cached path's full branch runs exactly the blocks of the plain path, in the same order."""
    model = Counted()
    x, t, captions = inputs(2, (16, 12), [20, 45])  # the mask path
    plain = model(x, t, captions)
    cache = StepCache(1e-30)
    for step in range(3):
        got = model(nudged(x, 0.5, step) if step else x, t, captions, step_cache=cache)
        expected = model(nudged(x, 0.5, step) if step else x, t, captions)
        assert torch.equal(got, expected)
    assert torch.equal(model(x, t, captions, step_cache=StepCache(1e-30)), plain)
    assert cache.calls == 3 and cache.skipped == 0 and cache.rels[0] is None
    assert all(r is not None and r > 0 for r in cache.rels[1:])


def test_huge_threshold_skips_every_call_after_the_first():
    model = Counted()
    x, t, captions = inputs(1, (16, 16), [20])
    cache = StepCache(1e9)
    outs = []
    for step in range(5):
        before = model.blocks
        outs.append(model(nudged(x, 0.3, step), t * (1 - 0.1 * step), captions, step_cache=cache))
        assert model.blocks - before == (FULL if step == 0 else SKIPPED)
    assert cache.calls == 5 and cache.skipped == 4
    assert all(torch.isfinite(o).all() for o in outs)


def test_a_skipped_call_on_the_same_input_reproduces_the_full_output():
    """first + (final − first) == final up to rounding: the residual bookkeeping is right."""
    model = Counted()
    x, t, captions = inputs(2, (16, 16), [20, 45])
    cache = StepCache(1e9)
    full = model(x, t, captions, step_cache=cache)
    skipped = model(x, t, captions, step_cache=cache)
    assert cache.skipped == 1 and cache.rels[1] == 0.0
    assert rel_error(skipped, full) <= 1e-6


def test_threshold_between_probed_values_skips_exactly_the_small_changes():
    """Calls: x0, x0 + tiny, x1 (new), x1 + tiny. A probe (never skipping) measures the rel values; a
    threshold between the small and the large ones skips calls 2 and 4 only, each compared with the last
    full call (1, then 3)."""
    model = Counted()
    x0, t, captions = inputs(1, (16, 16), [20], seed=0)
    x1, _, _ = inputs(1, (16, 16), [20], seed=1)
    sequence = [x0, nudged(x0, 1e-3, 10), x1, nudged(x1, 1e-3, 11)]
    probe = StepCache(1e-30)
    full_outputs = [model(x, t, captions, step_cache=probe) for x in sequence]
    small, large = max(probe.rels[1], probe.rels[3]), probe.rels[2]
    assert small < 1e-2 < 0.1 < large  # the inputs really are near / far
    threshold = math.sqrt(small * large)

    cache = StepCache(threshold)
    counts, outputs = [], []
    for x in sequence:
        before = model.blocks
        outputs.append(model(x, t, captions, step_cache=cache))
        counts.append(model.blocks - before)
    assert counts == [FULL, SKIPPED, FULL, SKIPPED]
    assert cache.skipped == 2 and cache.calls == 4
    assert [r is not None and r < threshold for r in cache.rels] == [False, True, False, True]
    assert torch.equal(outputs[0], full_outputs[0]) and torch.equal(outputs[2], full_outputs[2])
    for i in (1, 3):  # a skipped call approximates its full output (the change was tiny)
        assert rel_error(outputs[i], full_outputs[i]) <= 1e-2


@pytest.mark.parametrize("forced", [True, torch.tensor(True)], ids=["bool", "device-bool"])
def test_force_full_and_new_shapes_run_every_layer(forced):
    model = Counted()
    x, t, captions = inputs(1, (16, 16), [20])
    cache = StepCache(1e9)
    model(x, t, captions, step_cache=cache)
    cache.force_full = forced
    before = model.blocks
    model(x, t, captions, step_cache=cache)
    assert model.blocks - before == FULL and cache.skipped == 0 and cache.rels[-1] is None
    cache.force_full = torch.tensor(False)  # a device "no" lets the same call skip
    model(x, t, captions, step_cache=cache)
    assert cache.skipped == 1
    cache.force_full = False
    x2, t2, captions2 = inputs(1, (16, 24), [20])  # another size: nothing cached fits
    before = model.blocks
    model(x2, t2, captions2, step_cache=cache)
    assert model.blocks - before == FULL and cache.skipped == 1
    model(x2, t2, captions2, step_cache=cache)
    assert cache.skipped == 2


def test_one_decision_per_call_for_the_whole_batch():
    model = Counted()
    x, t, captions = inputs(3, (16, 16), [20, 45, 7])
    cache = StepCache(1e9)
    model(x, t, captions, step_cache=cache)
    model(nudged(x, 0.1, 1), t, captions, step_cache=cache)
    assert cache.calls == 2 and cache.skipped == 1 and len(cache.rels) == 2


# --- the denoiser that owns the cache ---


def conds(seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(20, CAP_DIM, generator=gen)], [torch.randn(9, CAP_DIM, generator=gen)]


SIGMAS = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.0])  # 4 steps: calls at 1.0, 0.8, 0.55, 0.3


def run_steps(denoiser, x: torch.Tensor, sigmas: torch.Tensor = SIGMAS) -> list[torch.Tensor]:
    """Euler-like: one denoiser call per step."""
    outs = []
    with torch.no_grad():
        for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
            denoised = denoiser(x, sigma)
            outs.append(denoised)
            x = denoised + following * (x - denoised) / sigma
    return outs


def test_denoiser_threshold_zero_is_the_exact_path_and_does_no_extra_work(monkeypatch):
    monkeypatch.setattr(StepCache, "skip", lambda *a: pytest.fail("the cache was consulted"))
    positive, _ = conds()
    model = Counted()
    x = inputs(1, (16, 16), [20])[0]
    off = ZImageDenoiser(model.dit, positive, None, 1.0, step_cache=0.0, sigmas=SIGMAS)
    assert off.step_cache is None and off.skipped_calls == 0
    got = run_steps(off, x)
    assert model.blocks == 4 * FULL
    plain = run_steps(ZImageDenoiser(model.dit, positive, None, 1.0), x)
    assert all(torch.equal(a, b) for a, b in zip(got, plain, strict=True))


@pytest.mark.parametrize(("cfg", "sigmas", "forced"), [(1.0, SIGMAS, 1), (2.5, SIGMAS, 1), (1.0, None, 0)])
def test_denoiser_huge_threshold_skips_all_but_the_first_and_forced_calls(cfg, sigmas, forced):
    """With the schedule, the last step's call is forced to run in full; CFG runs both halves in one
    forward, so one decision covers them."""
    positive, negative = conds()
    model = Counted()
    x = inputs(2, (16, 16), [20, 20])[0]
    denoiser = ZImageDenoiser(model.dit, positive, negative, cfg, step_cache=1e9, sigmas=sigmas)
    outs = run_steps(denoiser, x)
    assert denoiser.calls == 4 and denoiser.step_cache is not None
    assert denoiser.skipped_calls == denoiser.calls - 1 - forced
    skipped = denoiser.skipped_calls
    assert model.blocks == (4 - skipped) * FULL + skipped * SKIPPED
    assert all(torch.isfinite(o).all() for o in outs)
    denoiser.check_finite()


def test_each_denoiser_starts_with_an_empty_cache():
    positive, _ = conds()
    model = Counted()
    x = inputs(1, (16, 16), [20])[0]
    first = ZImageDenoiser(model.dit, positive, None, 1.0, step_cache=1e9, sigmas=SIGMAS)
    a = run_steps(first, x)
    blocks = model.blocks
    second = ZImageDenoiser(model.dit, positive, None, 1.0, step_cache=1e9, sigmas=SIGMAS)
    b = run_steps(second, x)
    assert model.blocks - blocks == blocks  # the second run's first call ran every layer again
    assert second.step_cache is not first.step_cache and second.step_cache.rels[0] is None
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_denoiser_runs_a_graphed_dit_without_its_graphs(caplog):
    positive, _ = conds()
    dit = from_diffusers(reference_dit())
    with caplog.at_level(logging.WARNING, logger="zturbo.models.denoiser"):
        denoiser = ZImageDenoiser(GraphedDiT(dit), positive, None, 1.0, step_cache=0.1)
    assert denoiser.model is dit and isinstance(denoiser.step_cache, StepCache)
    assert "without its CUDA graphs" in caplog.text


def test_denoiser_with_the_diffusers_class_runs_without_the_cache(caplog):
    positive, _ = conds()
    reference = reference_dit()
    assert not isinstance(reference, ZImageDiT)
    with caplog.at_level(logging.WARNING, logger="zturbo.models.denoiser"):
        denoiser = ZImageDenoiser(reference, positive, None, 1.0, step_cache=0.1, sigmas=SIGMAS)
    assert denoiser.step_cache is None and "needs zturbo's DiT" in caplog.text
    outs = run_steps(denoiser, inputs(1, (16, 16), [20])[0])
    assert len(outs) == 4 and denoiser.skipped_calls == 0
