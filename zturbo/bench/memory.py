"""Small-GPU benchmark: the same 1024² job under VRAM budgets, with bf16 and GGUF Q8_0/Q4_0 weights.

For each weights file the models are loaded once; the unconstrained row (everything resident) comes
first and is the "compute-only" reference; then each budget's plan re-places the same modules in
place and the run is capped with `torch.cuda.set_per_process_memory_fraction(budget / card)`, so a
plan that overshoots fails (or takes its out-of-memory fallback, which the row records) instead of
quietly using the whole card. The GGUF files are written from the bf16 one with the torch quantizers
on the GPU (seconds), once per models folder.

`--dtype fp16` runs the same rows on the fp16-safe DiT path (fp16 weights, fp32 residual); `--dtype auto
--no-bf16` with everything a GPU without bf16 runs (fp16-safe DiT, fp32 VAE decode).

Rows: `mode` = weights, `vram_plan` = budget; `extra` has the dtype, the plan, the estimated and measured peaks,
the sampling time and its ratio to the same weights resident (`sample_vs_resident`: the streamed
plans' target is ≤ 1.2 for Q4) and the end-to-end ratio to unconstrained bf16 (`e2e_vs_bf16`: the 8G
target is ≤ 1.5).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import json
import time
from pathlib import Path

import torch
from gguf import GGMLQuantizationType as Q

from zturbo.bench.harness import PROMPT, Row, print_table, synced_median, write_full_size_models
from zturbo.checkpoints.layout import ModelPaths
from zturbo.engine import Engine
from zturbo.errors import GenerationError, InputError
from zturbo.generate import ModelFiles, run_request, save_generated
from zturbo.request import GenerationRequest
from zturbo.runtime.memory import GIB, MemoryPlan, Workload, parse_vram, plan_memory, system_ram, usable_vram
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.synthetic_quant import gguf_dit_from

GGUF_TYPES = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_k": Q.Q4_K, "q6_k": Q.Q6_K}


def dit_file(paths: ModelPaths, weights: str, models_dir: Path) -> Path:
    """The DiT for `weights`: the bf16 file, or a GGUF written from it on the GPU (kept for reuse)."""
    if weights == "bf16":
        return paths.dit
    out = models_dir / "gguf" / f"z_image_turbo_{weights}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        gguf_dit_from(paths.dit, out.with_suffix(".part"), GGUF_TYPES[weights], device="cuda")
        out.with_suffix(".part").rename(out)
        print(f"wrote {out.name} ({out.stat().st_size / 1e9:.1f} GB) in {time.perf_counter() - started:.0f}s")
    return out


@dataclasses.dataclass
class _Job:
    engine: Engine
    paths: ModelPaths
    request: GenerationRequest
    out_dir: Path
    repeats: int

    def end_to_end(self) -> None:
        files = ModelFiles(self.paths.dit.name, self.paths.text_encoder.name, self.paths.vae.name)
        save_generated(run_request(self.engine, self.paths, self.request), files, self.out_dir, prefix="mem")

    def sampling(self) -> float:
        """Seconds for the 8 sampling steps alone (the DiT's share, streamed or not)."""
        model, clip, _ = self.engine.load_all(self.paths)
        cond = self.engine.encode_text(clip, PROMPT)
        r = self.request
        latent = torch.zeros(1, 16, r.height // 8, r.width // 8)

        def run() -> None:
            self.engine.sample(
                model,
                cond,
                None,
                latent,
                seed=1,
                steps=r.steps,
                cfg=1.0,
                sampler_name=r.sampler,
                scheduler=r.scheduler,
            )

        return synced_median(run, self.repeats)


def measure(job: _Job, plan: MemoryPlan, weights: str, cap_gib: float | None) -> Row:
    """Warm-up, then median end-to-end and sampling times and the peaks, under an optional cap."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0)
    job.engine.memory.use(plan)  # type: ignore[union-attr]
    gc.collect()
    torch.cuda.empty_cache()
    if cap_gib is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
    extra: dict = {"plan": str(plan), "level": plan.level, "estimated_peak_gib": plan.peak / GIB}
    try:
        started = time.perf_counter()
        job.end_to_end()
        warmup = time.perf_counter() - started
        torch.cuda.reset_peak_memory_stats()
        e2e = synced_median(job.end_to_end, job.repeats)
        peak, reserved = torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB
        extra["sample_s"] = job.sampling()
    except (GenerationError, torch.cuda.OutOfMemoryError) as exc:
        extra["error"] = str(exc).splitlines()[0]
        warmup, e2e, peak, reserved = float("nan"), float("nan"), float("nan"), float("nan")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    used = job.engine.memory.plan  # type: ignore[union-attr]
    extra.update(peak_reserved_gib=reserved, fallback_used=used is not None and used.level != plan.level)
    r = job.request
    step_ms = extra.get("sample_s", float("nan")) / r.steps * 1e3
    return Row(
        "zturbo", weights, f"{r.width}x{r.height}", r.steps, 1, e2e, step_ms, peak, 1 / e2e,
        vram_plan=plan.name, warmup_s=warmup, extra=extra,
    )  # fmt: skip


def _save(rows: list[Row], results_dir: Path) -> Path:
    device = torch.cuda.get_device_name()
    today = dt.date.today().isoformat()
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{today}-{device.replace(' ', '_')}-memory.json"
    data = {
        "device": device,
        "date": today,
        "torch": torch.__version__,
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def _add_ratios(rows: list[Row]) -> None:
    resident = {r.mode: r for r in rows if r.vram_plan == "unconstrained"}
    for row in rows:
        base = resident.get(row.mode)
        if base is not None and "sample_s" in row.extra and "sample_s" in base.extra:
            row.extra["compute_only_sample_s"] = base.extra["sample_s"]
            row.extra["sample_vs_resident"] = row.extra["sample_s"] / base.extra["sample_s"]
        if "bf16" in resident:
            row.extra["e2e_vs_bf16"] = row.end_to_end_s / resident["bf16"].end_to_end_s


def plan_sizes(plans: list[str]) -> list[tuple[str, float]]:
    """`--vram-plans` entries with their GiB, largest first; "auto" (no fixed size) is refused."""
    sized = []
    for plan in plans:
        gib = parse_vram(plan)
        if gib is None:
            raise InputError(f"--vram-plans: {plan!r} is not a card size; give sizes like 4G,8G")
        sized.append((plan, gib))
    return sorted(sized, key=lambda e: -e[1])


def run_memory(
    models_dir: Path,
    plans: list[str],
    weights: list[str],
    *,
    steps: int,
    size: tuple[int, int],
    out_dir: Path,
    results_dir: Path,
    repeats: int = 2,
    dtype: str = "bf16",
    bf16: bool | None = None,
) -> list[Row]:
    """Rows per weights file and budget; `dtype` is the engine's `--dtype` (fp16: the fp16-safe DiT),
    `bf16=False` with dtype "auto" runs a GPU without bf16's dtypes (fp16-safe DiT, fp32 VAE)."""
    plan_budgets = plan_sizes(plans)
    paths = write_full_size_models(models_dir)
    files = {w: dit_file(paths, w, models_dir) for w in weights}
    out_dir.mkdir(parents=True, exist_ok=True)
    request = GenerationRequest(PROMPT, width=size[0], height=size[1], steps=steps, seed=1)
    workload = Workload(size[0], size[1])
    rows: list[Row] = []
    for w in weights:
        wpaths = dataclasses.replace(paths, dit=files[w])
        engine = Engine(EngineSettings("cuda", dtype, plan=MemoryPlan(), bf16=bf16))  # a fixed plan: ours
        memory = engine.memory
        assert memory is not None
        memory.prepare(wpaths, workload)  # sizes only
        job = _Job(engine, wpaths, request, out_dir, repeats)
        budgets: list[tuple[str, float | None]] = [("unconstrained", None), *plan_budgets]
        for name, gib in budgets:
            budget, label = usable_vram(name, torch.device("cuda")) if gib else (None, "unconstrained")
            plan = plan_memory(
                memory.sizes,
                workload,
                budget=budget,
                name=label,
                ram=system_ram(),
                dequant_bytes=memory.dequant_bytes(),
                precision=memory.precision(),
            )
            rows.append(measure(job, plan, w, gib))
            rows[-1].extra["dtypes"] = engine.placement.describe()
            _add_ratios(rows)
            print_table(rows[-1:])
            print(f"  {rows[-1].extra}", flush=True)
            _save(rows, results_dir)
        engine.free()
        del engine, job, memory
        gc.collect()
        torch.cuda.empty_cache()
    print_table(rows)
    return rows
