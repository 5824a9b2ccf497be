"""Microbenchmark: one Z-Image DiT step at 1024² on full-size random weights, variant by variant.

    python benchmarks/dit_step.py [--models-dir /tmp/zturbo-bench-models] [--budget-s 180]

4096 image tokens + a 120-token caption (padded to 128): 4224 tokens, batch 1. Rows: diffusers'
class as is; zturbo's DiT eager per SDPA backend (cuDNN, FlashAttention, efficient) without and with
an all-True mask (what diffusers used to pass at batch 1; FlashAttention refuses masks); the same
compiled; compiled + CUDA graph. Compiled rows start in order of interest and stop once --budget-s
seconds have passed (each cold compile takes tens of seconds). Each row also gives its output's
relative difference from zturbo eager with cuDNN (bf16: ~1e-3 is kernel noise, not an error). Prints a
table and writes benchmarks/results/<date>-<device>-dit_step.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend

from zturbo.bench.harness import write_full_size_models
from zturbo.checkpoints.load import load_dit
from zturbo.models.zimage_convert import from_diffusers
from zturbo.models.zimage_dit import call_block
from zturbo.runtime.compile import SpeedOptions, accelerate

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
MODES = {"eager": "eager", "compiled": "compile", "compiled+graph": "max"}
COMPILED = [("cudnn", False), ("cudnn", True), ("flash", False), ("efficient", False), ("efficient", True)]


class AllTrueMasks:
    """Stands in for `dit.plans`: the same plans with all-True key masks on every attention."""

    def __init__(self, plans) -> None:
        self.plans = plans
        self._cache: dict = {}

    def get(self, h_tokens, w_tokens, caption_lens, device):
        key = (h_tokens, w_tokens, tuple(caption_lens), str(device))
        if key not in self._cache:
            plan = self.plans.get(h_tokens, w_tokens, caption_lens, device)
            ones = lambda n: torch.ones(1, 1, 1, n, dtype=torch.bool, device=device)  # noqa: E731
            width = plan.image_padded + plan.caption_width
            self._cache[key] = dataclasses.replace(
                plan, mask=ones(width), caption_mask=ones(plan.caption_width)
            )
        return self._cache[key]


def time_ms(fn, warmup: int = 3, reps: int = 15) -> tuple[float, float]:
    """(median ms over reps, seconds the first call took: compile and plan building show up here)."""
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - started
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), first


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/zturbo-bench-models"))
    parser.add_argument("--budget-s", type=float, default=180.0, help="no new compiled row after this")
    parser.add_argument("--compile-cache", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    paths = write_full_size_models(args.models_dir)
    module = load_dit(paths.dit, dtype=torch.bfloat16, device="cuda").module
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(1, 16, 128, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    t = torch.full((1,), 0.5, device="cuda", dtype=torch.bfloat16)
    caption = torch.randn(120, 2560, device="cuda", generator=gen, dtype=torch.bfloat16)
    with torch.no_grad():
        rows = [reference_row(module, x, t, caption)]
        dit = from_diffusers(module)  # spends `module`: its separate Q/K/V, W1/W3 are released
        del module
        run_variants(dit, x, t, caption, rows, args, started)
    print_table(rows)
    save(rows, args.results)


def reference_row(module, x, t, caption) -> dict:
    """diffusers' class as it runs in the reference path (lists of latents, its own attention dispatch)."""
    ms, first = time_ms(lambda: module(list(x.unsqueeze(2).unbind(0)), t, [caption], return_dict=False))
    return _row("diffusers class (eager)", "default", None, ms, first, None)


def variants() -> list[tuple[str, str, bool]]:
    """(kind, backend, all-True mask) in the order they run; compiled ones by interest (budget cuts the tail)."""
    eager = [("eager", b, m) for b in BACKENDS for m in (False, True)]
    compiled = [("compiled", b, m) for b, m in COMPILED]
    return [*eager, compiled[0], ("compiled+graph", "cudnn", False), *compiled[1:]]


def run_variants(dit, x, t, caption, rows: list[dict], args, started: float) -> None:
    plans, baseline = dit.plans, dit(x, t, [caption])
    for kind, name, masked in variants():
        label = f"zturbo {kind}"
        if kind != "eager" and time.perf_counter() - started > args.budget_s:
            rows.append(_row(label, name, masked, None, None, None, "skipped: time budget"))
            continue
        options = SpeedOptions(MODES[kind], cache_dir=args.compile_cache, sdpa_backends=(BACKENDS[name],))
        dit.plans = AllTrueMasks(plans) if masked else plans
        runner = accelerate(dit, options)
        try:
            ms, first = time_ms(lambda: runner(x, t, [caption]))  # noqa: B023 (called at once)
            rows.append(_row(label, name, masked, ms, first, rel(runner(x, t, [caption]), baseline)))
        except RuntimeError as exc:  # FlashAttention with a mask: no kernel
            rows.append(_row(label, name, masked, None, None, None, str(exc).split("\n")[0][:60]))
        finally:
            dit.run_block, dit.plans = call_block, plans
        print(rows[-1], flush=True)


def _row(label, backend, masked, ms, first_s, diff, note="") -> dict:
    return {
        "variant": label,
        "sdpa": backend,
        "mask": masked,
        "step_ms": None if ms is None else round(ms, 2),
        "first_call_s": None if first_s is None else round(first_s, 1),
        "rel_vs_zturbo_eager_cudnn": diff,
        "note": note,
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'variant':<32}{'sdpa':>10}{'mask':>6}{'step ms':>9}{'1st call s':>11}{'rel diff':>10}  note")
    for r in rows:
        ms = "-" if r["step_ms"] is None else f"{r['step_ms']:.1f}"
        first = "-" if r["first_call_s"] is None else f"{r['first_call_s']:.1f}"
        diff = "-" if r["rel_vs_zturbo_eager_cudnn"] is None else f"{r['rel_vs_zturbo_eager_cudnn']:.1e}"
        mask = "-" if r["mask"] is None else ("yes" if r["mask"] else "no")
        print(f"{r['variant']:<32}{r['sdpa']:>10}{mask:>6}{ms:>9}{first:>11}{diff:>10}  {r['note']}")


def save(rows: list[dict], results_dir: Path) -> None:
    device = torch.cuda.get_device_name()
    today = dt.date.today().isoformat()
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{today}-{device.replace(' ', '_')}-dit_step.json"
    data = {"device": device, "date": today, "torch": torch.__version__, "tokens": 4224, "rows": rows}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
