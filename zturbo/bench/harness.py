"""Benchmark harness: zturbo next to diffusers' ZImagePipeline, in one process, on the same weights.

Full-size random weights are written in the real ComfyUI layout (nothing is downloaded), loaded through
zturbo's loader, and the very same modules drive diffusers' pipeline for the baseline rows, so every
difference in a row is the runtime's, not the weights'. Times use CUDA events/synchronisation and are
medians of repeated warm runs; `end_to_end_s` is prompt → PNG on disk (text encode, sampling, VAE
decode, PNG encode and write).
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from zturbo.bench.speed import (
    graph_facts,
    guard_reference,
    print_quality,
    quality,
    set_speed,
    system_dtype,
    system_weight_dtype,
    zturbo_modes,
)
from zturbo.checkpoints.layout import ModelPaths, resolve_models, tokenizer_dir
from zturbo.engine import Engine
from zturbo.generate import ModelFiles, run_request, save_generated
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.synthetic import ModelSet, write_comfy_models

PROMPT = (
    "A cozy reading nook by a rain-streaked window at dusk, warm lamp light, a cat asleep on a knitted "
    "blanket, shelves of old books, steam rising from a mug of tea, soft film grain, 35mm photograph"
)


@dataclass
class Row:
    system: str
    mode: str
    resolution: str
    steps: int
    batch: int
    end_to_end_s: float
    step_ms: float
    peak_vram_gib: float
    images_per_s: float
    vram_plan: str = "unconstrained"
    text_encode_ms: float | None = None
    vae_decode_ms: float | None = None
    warmup_s: float | None = None
    extra: dict = field(default_factory=dict)


def synced_median(fn: Callable[[], object], repeats: int = 1) -> float:
    """Median wall seconds of `fn()` with the GPU synchronised around each call (no warm-up)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cuda_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of `fn` on the GPU (synchronised), after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_full_size_models(models_dir: Path) -> ModelPaths:
    if not (models_dir / "diffusion_models").is_dir():
        started = time.perf_counter()
        write_comfy_models(models_dir, ModelSet(), dtype=torch.bfloat16, device="cuda")
        print(f"wrote full-size random models in {time.perf_counter() - started:.0f}s", flush=True)
    return resolve_models(models_dir)


def _files(paths: ModelPaths) -> ModelFiles:
    return ModelFiles(paths.dit.name, paths.text_encoder.name, paths.vae.name)


def bench_zturbo(
    engine: Engine,
    paths: ModelPaths,
    width: int,
    height: int,
    batch: int,
    steps: int,
    out_dir: Path,
    mode: str = "eager",
) -> Row:
    request = bench_request(width, height, batch, steps)
    files = _files(paths)

    def end_to_end() -> None:
        result = run_request(engine, paths, request)
        save_generated(result, files, out_dir, prefix="bench")

    started = time.perf_counter()
    end_to_end()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    e2e = cuda_time(end_to_end, repeats=3)
    peak = torch.cuda.max_memory_allocated() / 2**30

    model, clip, vae = engine.load_all(paths, engine.settings.weight_dtype)
    cond = engine.encode_text(clip, PROMPT)
    from zturbo.models.denoiser import ZImageDenoiser

    den = ZImageDenoiser(model.transformer, cond.embeds, None, 1.0)
    x = torch.randn(batch, 16, height // 8, width // 8, device="cuda")
    sigma = torch.full((batch,), 0.5, device="cuda")
    with torch.no_grad():  # as in sampling: compiled code is specialised on grad mode
        step = cuda_time(lambda: den(x, sigma), repeats=10)
    encode = cuda_time(lambda: engine.encode_text(clip, PROMPT), repeats=10)
    decode = cuda_time(lambda: engine.decode(vae, x), repeats=5)
    return Row(
        "zturbo",
        mode,
        f"{width}x{height}",
        steps,
        batch,
        e2e,
        step * 1e3,
        peak,
        batch / e2e,
        text_encode_ms=encode * 1e3,
        vae_decode_ms=decode * 1e3,
        warmup_s=warmup,
    )


def diffusers_pipeline(engine: Engine, paths: ModelPaths):
    """diffusers' ZImagePipeline around the same modules zturbo loaded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import AutoTokenizer

    model, clip, vae = engine.load_all(paths)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    pipe = ZImagePipeline(
        scheduler=scheduler,
        vae=vae.module,
        text_encoder=clip.component.module,
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir(None)),
        transformer=model.transformer,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]  # diffusers types it as a dummy
    return pipe


def bench_diffusers(pipe, width: int, height: int, batch: int, steps: int, out_dir: Path, mode: str) -> Row:
    def end_to_end() -> None:
        images = pipe(
            PROMPT,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=0.0,
            num_images_per_prompt=batch,
            generator=torch.Generator("cuda").manual_seed(1),
        ).images
        for i, image in enumerate(images):
            image.save(out_dir / f"diffusers_{i}.png", compress_level=4)

    started = time.perf_counter()
    end_to_end()
    warmup = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    e2e = cuda_time(end_to_end, repeats=3)
    peak = torch.cuda.max_memory_allocated() / 2**30
    dtype = pipe.transformer.dtype
    latents = [torch.randn(16, 1, height // 8, width // 8, device="cuda", dtype=dtype) for _ in range(batch)]
    caps = pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False)[0] * batch
    t = torch.full((batch,), 0.5, device="cuda", dtype=dtype)
    with torch.no_grad():
        step = cuda_time(lambda: pipe.transformer(latents, t, caps, return_dict=False), repeats=10)
    return Row(
        "diffusers-" + mode,
        mode,
        f"{width}x{height}",
        steps,
        batch,
        e2e,
        step * 1e3,
        peak,
        batch / e2e,
        warmup_s=warmup,
    )


def save_results(rows: list[Row], out_dir: Path) -> Path:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    today = dt.date.today().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{today}-{device.replace(' ', '_')}.json"
    data = {"device": device, "date": today, "torch": torch.__version__, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def print_table(rows: list[Row]) -> None:
    head = f"{'system:mode':<28}{'res':>11}{'batch':>6}{'e2e s':>8}{'step ms':>9}{'enc ms':>8}{'vae ms':>8}{'VRAM GiB':>9}{'img/s':>7}{'warm s':>8}"
    print(head)
    for r in rows:
        enc = f"{r.text_encode_ms:.0f}" if r.text_encode_ms else "-"
        vae = f"{r.vae_decode_ms:.0f}" if r.vae_decode_ms else "-"
        print(
            f"{r.system + ':' + r.mode:<28}{r.resolution:>11}{r.batch:>6}{r.end_to_end_s:>8.3f}{r.step_ms:>9.1f}{enc:>8}{vae:>8}"
            f"{r.peak_vram_gib:>9.1f}{r.images_per_s:>7.2f}{r.warmup_s or 0:>8.1f}"
        )


def _release(engine: Engine) -> None:
    """Free the engine's models (and compiled code holding them) so the next rows start from empty VRAM."""
    engine.free()
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def bench_request(width: int, height: int, batch: int, steps: int) -> GenerationRequest:
    return GenerationRequest(PROMPT, width=width, height=height, steps=steps, batch=batch, seed=1)


@dataclass
class _Session:
    """One benchmark run: where results go, the buckets measured, and the quality guards per bucket."""

    paths: ModelPaths
    buckets: list[tuple[int, int, int]]
    steps: int
    out_dir: Path
    results_dir: Path
    zturbo_runs: list[tuple[str, str]]  # (system, speed mode) in the order they run
    guards: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def record(self, row: Row) -> None:
        self.rows.append(row)
        print_table([row])
        save_results(self.rows, self.results_dir)

    def zturbo_rows(self, engine: Engine, system: str, mode: str, extra: dict) -> None:
        weights = system_weight_dtype(system)
        for bucket in self.buckets:
            row = bench_zturbo(engine, self.paths, *bucket, self.steps, self.out_dir, mode)
            row.system = system
            request = bench_request(*bucket, self.steps)
            guard = quality(engine, self.paths, request, self.guards[bucket])
            facts = graph_facts(engine, self.paths, weights)
            dtypes = engine.placement.describe()
            row.extra.update(extra, weight_dtype=weights, dtypes=dtypes, **guard, **facts)
            self.record(row)

    def diffusers_rows(self, engine: Engine, systems: list[str]) -> None:
        pipe = diffusers_pipeline(engine, self.paths)
        for system in systems:
            if system == "diffusers-compiled":
                pipe.transformer.compile_repeated_blocks(fullgraph=True)
            for width, height, batch in self.buckets:
                mode = system.split("-", 1)[1]
                self.record(bench_diffusers(pipe, width, height, batch, self.steps, self.out_dir, mode))


def run(
    models_dir: Path,
    sizes: list[tuple[int, int]],
    batches: list[int],
    steps: int,
    systems: list[str],
    out_dir: Path,
    results_dir: Path,
    compile_cache: Path | None = None,
    step_cache: float = 0.12,
) -> list[Row]:
    """Rows on the diffusers modules first (zturbo `reference`, diffusers eager/compiled), then zturbo's
    own DiT on freshly loaded weights (the first engine freed, so peak VRAM compares), mode by mode."""
    paths = write_full_size_models(models_dir)
    engine = Engine(EngineSettings("cuda", "bf16", speed="reference"))
    started = time.perf_counter()
    engine.load_all(paths)
    print(f"loaded in {time.perf_counter() - started:.1f}s", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    buckets = [(width, height, batch) for width, height in sizes for batch in batches]
    runs = [(s, m) for s in systems if s.startswith("zturbo") for m in zturbo_modes(s)]
    session = _Session(paths, buckets, steps, out_dir, results_dir, runs)
    if runs:
        session.guards = {b: guard_reference(engine, paths, bench_request(*b, steps)) for b in buckets}
    for system, mode in runs:
        if mode == "reference":
            session.zturbo_rows(engine, system, mode, {"speed": "reference"})
    if diffusers_systems := [s for s in systems if s.startswith("diffusers")]:
        session.diffusers_rows(engine, diffusers_systems)
    loads = dict.fromkeys((system_weight_dtype(s), system_dtype(s)) for s, m in runs if m != "reference")
    for weights, (dtype, bf16) in loads:
        _release(engine)  # each weight dtype and dtype on freshly loaded weights, so peak VRAM compares
        engine = Engine(EngineSettings("cuda", dtype, speed="eager", weight_dtype=weights, bf16=bf16))
        engine.load_all(paths, weights)
        resident = {"resident_gib_before": round(torch.cuda.memory_allocated() / 2**30, 2)}
        for system, mode in runs:
            same_load = (system_weight_dtype(system), system_dtype(system)) == (weights, (dtype, bf16))
            if mode != "reference" and same_load:
                cache = step_cache if system == "zturbo-cache" else 0.0
                facts = set_speed(engine, paths, mode, compile_cache, weights, cache)
                session.zturbo_rows(engine, system, mode, {**facts, **resident})
    print_table(session.rows)
    print_quality(session.rows)
    return session.rows
