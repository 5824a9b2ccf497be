"""Where one image's time goes: phases of a warm end-to-end run, the kernels of one DiT step, and
A/B timings of candidate speed-ups outside the DiT (text encoder, VAE decode, PNG).

    python benchmarks/profile_e2e.py [--models-dir /tmp/zturbo-bench-models] [--speed compile]
        [--weight-dtype default|fp8_e4m3fn_fast] [--batch 1] [--tiny]

Full-size random weights (written once, as `zturbo bench` does); `--tiny` uses the test-size models
on any device (a smoke test of this script, numbers meaningless). Prints tables and writes
benchmarks/results/<date>-<device>-profile.json. Candidate speed-ups are measured here first and go
into the engine only if they pay.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from zturbo.bench.harness import PROMPT, bench_request, write_full_size_models
from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.generate import ModelFiles, save_generated
from zturbo.models.denoiser import ZImageDenoiser
from zturbo.output.png import save_png
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.synthetic import TINY, write_comfy_models


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> tuple[float, object]:
    """(median ms, last result) after one warm-up call."""
    result = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def phases(engine: Engine, paths, request, out_dir: Path, device: torch.device) -> dict[str, float]:
    """One warm run split at each phase boundary (synchronised), ms."""
    files = ModelFiles(paths.dit.name, paths.text_encoder.name, paths.vae.name)
    marks: dict[str, float] = {}
    sync(device)
    t0 = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal t0
        sync(device)
        now = time.perf_counter()
        marks[name] = (now - t0) * 1e3
        t0 = now

    model, clip, vae = engine.load_all(paths)
    model = engine.with_shift(model, request.shift)
    mark("load (cached)")
    cond = engine.encode_text(clip, request.prompt)
    mark("text encode")
    empty = torch.zeros(request.batch, 16, request.height // 8, request.width // 8)
    latents = engine.sample(
        model,
        cond,
        None,
        empty,
        seed=1,
        steps=request.steps,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
    )
    mark(f"sample ({request.steps} steps)")
    images = engine.decode(vae, latents)
    mark("VAE decode (+ to CPU)")
    from zturbo.generate import Generated

    save_generated(Generated(images, latents, request), files, out_dir, prefix="profile")
    mark("PNG encode + write")
    marks["total"] = sum(marks.values())
    return marks


def kernel_profile(fn: Callable[[], object], device: torch.device, top: int = 30) -> dict:
    """CUDA kernel time of `fn` by category and the top kernels (one call, after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    by_kernel: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            by_kernel[event.name] += event.device_time_total / 1e3
            counts[event.name] += 1
    categories: dict[str, float] = defaultdict(float)
    for name, ms in by_kernel.items():
        categories[_category(name)] += ms
    ranked = sorted(by_kernel.items(), key=lambda kv: -kv[1])[:top]
    return {
        "total_ms": sum(by_kernel.values()),
        "categories_ms": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        "top": [{"kernel": k[:110], "ms": round(v, 3), "calls": counts[k]} for k, v in ranked],
    }


def _category(name: str) -> str:
    low = name.lower()
    if "triton" in low:  # inductor names fused kernels after the ops around them ("..._attention_...")
        return "triton (fused elementwise)"
    if any(s in low for s in ("fmha", "flash", "cudnn", "attention", "sdpa")):
        return "attention"
    if any(s in low for s in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "matmul", "scaled_mm")):
        return "gemm"
    if any(s in low for s in ("elementwise", "reduce", "norm", "copy", "cat", "fill")):
        return "aten elementwise/reduce/copy"
    return "other"


def text_encoder_variants(clip, device: torch.device) -> dict:
    """Current encode vs use_cache=False vs a CUDA graph of the same forward (static ids)."""
    model = clip.component.module
    ids = torch.tensor([clip.encoder.token_ids([PROMPT])[0]], device=device)
    out: dict = {"tokens": ids.shape[1]}
    out["current_ms"], _ = timed(lambda: clip.encoder.encode([PROMPT]), device, 10)

    def forward():
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states[-2]

    out["no_cache_ms"], ref = timed(forward, device, 10)
    if device.type == "cuda":
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                forward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static = forward()
            out["cuda_graph_ms"], _ = timed(lambda: graph.replay(), device, 10)
            graph.replay()
            sync(device)
            out["cuda_graph_max_abs_diff"] = float((static.float() - ref.float()).abs().max())
        except Exception as exc:  # noqa: BLE001 — a measurement, report why it failed
            out["cuda_graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


def vae_variants(vae, latent: torch.Tensor, device: torch.device) -> dict:
    """Decode as the engine runs it vs torch.compile of the decoder, NCHW and channels_last."""
    module = vae.module
    param = next(module.parameters())
    z = latent.to(device, param.dtype)
    out: dict = {"dtype": str(param.dtype)}

    def decode():
        with torch.no_grad():
            return module.decode(z, return_dict=False)[0]

    out["engine_ms"], ref = timed(decode, device, 5)
    if device.type != "cuda":
        return out
    decoder = module.decoder
    for layout in (torch.contiguous_format, torch.channels_last):
        name = "channels_last" if layout == torch.channels_last else "nchw"
        module.to(memory_format=layout)
        try:
            started = time.perf_counter()
            module.decoder = torch.compile(decoder, dynamic=False)
            decode()
            sync(device)
            out[f"compiled_{name}_first_call_s"] = time.perf_counter() - started
            out[f"compiled_{name}_ms"], other = timed(decode, device, 5)
            out[f"compiled_{name}_max_abs_diff"] = float((other.float() - ref.float()).abs().max())
        except Exception as exc:  # noqa: BLE001 — a measurement: report why it failed
            out[f"compiled_{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            module.decoder = decoder
    module.to(memory_format=torch.contiguous_format)
    return out


def png_variants(images: torch.Tensor, out_dir: Path) -> dict:
    path = out_dir / "png_probe.png"
    ms, _ = timed(lambda: save_png(images[0], path, {"parameters": PROMPT}), torch.device("cpu"), 5)
    return {"save_png_ms": ms, "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/zturbo-bench-models"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/zturbo-profile-out"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--speed", default="compile")
    parser.add_argument("--weight-dtype", default="default")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--compile-cache", type=Path, default=None)
    parser.add_argument("--skip", default="", help="comma list of: te,vae,png,kernels")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        if not (args.models_dir / "diffusion_models").is_dir():
            write_comfy_models(args.models_dir, TINY)
        paths = resolve_models(args.models_dir)
    else:
        paths = write_full_size_models(args.models_dir)
    width, height = (int(v) for v in args.size.split("x"))
    request = bench_request(width, height, args.batch, 8)
    engine = Engine(
        EngineSettings(device.type, "bf16", speed=args.speed, compile_cache=args.compile_cache)
    )
    started = time.perf_counter()
    model, clip, vae = engine.load_all(paths, args.weight_dtype)
    report: dict = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "load_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for _ in range(2):
        phases(engine, paths, request, args.out, device)
    report["warmup_s"] = time.perf_counter() - started
    runs = [phases(engine, paths, request, args.out, device) for _ in range(3)]
    report["phases_ms"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps(report["phases_ms"], indent=1), flush=True)

    cond = engine.encode_text(clip, PROMPT)
    den = ZImageDenoiser(model.transformer, cond.embeds, None, 1.0)
    x = torch.randn(args.batch, 16, height // 8, width // 8, device=device)
    sigma = torch.full((args.batch,), 0.5, device=device)
    with torch.no_grad():
        report["step_ms"], _ = timed(lambda: den(x, sigma), device, 10)
        if "kernels" not in skip and device.type == "cuda":
            report["step_kernels"] = kernel_profile(lambda: den(x, sigma), device)
            print(json.dumps(report["step_kernels"], indent=1), flush=True)
    if "te" not in skip:
        report["text_encoder"] = text_encoder_variants(clip, device)
        print(json.dumps(report["text_encoder"], indent=1), flush=True)
    if "vae" not in skip:
        report["vae"] = vae_variants(vae, x.float() / 0.3611, device)
        print(json.dumps(report["vae"], indent=1), flush=True)
    if "png" not in skip:
        images = engine.decode(vae, x)
        report["png"] = png_variants(images, args.out)
        print(json.dumps(report["png"], indent=1), flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    today = dt.date.today().isoformat()
    args.results.mkdir(parents=True, exist_ok=True)
    tag = f"{args.speed}-{args.weight_dtype}-b{args.batch}-{args.size}"
    path = args.results / f"{today}-{name.replace(' ', '_')}-profile-{tag}.json"
    report.update(device=name, date=today, torch=torch.__version__)
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"step {report['step_ms']:.1f} ms; wrote {path}")


if __name__ == "__main__":
    main()
