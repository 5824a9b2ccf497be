"""ControlNet and 2K-upscale cost on full-size random weights (the image-input GPU rows).

    python benchmarks/control.py [--models-dir /tmp/zturbo-bench-models] [--plans resident,8G,4G]
                                 [--weights bf16,q4_0] [--strength 0.8] [--repeats 3]
                                 [--upscale-plans resident,8G] [--template PATH]

`generate` rows: the CLI's path (`run_request` + PNG save) for a 1024², 8-step job, without and with a
full-size Z-Image-Turbo-Fun-Controlnet-Union-2.1 (15 control blocks + 2 refiner blocks, random bf16
weights) at `--strength` on the Canny map of a 1024² test picture (`zturbo generate --control`), per
memory plan. "resident": no planning, every component on the GPU. "8G"/"4G": the engine plans for that
budget and the process is capped to it (`torch.cuda.set_per_process_memory_fraction`), so a plan that
overshoots fails or takes its fallback, which the row records, instead of borrowing the rest of the
card. GGUF weights are written from the bf16 DiT on the GPU once per models folder.

`upscale` rows: the official `utility_z_image_turbo_2k_upscaler.app.json` template, unmodified, through
the workflow runner (`zturbo run`) with a full-size RealESRGAN_x4plus (23 RRDB blocks, random weights)
on a 1024² input: ×4 with the model, ×0.5 Lanczos, 2048² VAE encode, 5 steps at denoise 0.33, decode.

Times are CUDA-synchronised medians of `--repeats` runs after one warm-up run; `sample_s` is the
sampling phase alone (between the "sampling" and "decoding" phases); peaks are over the timed runs.
Rows go to benchmarks/results/<date>-<device>-control.json (`--plans ""`: -upscale.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from zturbo.bench.harness import PROMPT, synced_median, write_full_size_models
from zturbo.bench.memory import dit_file
from zturbo.checkpoints.layout import ModelPaths
from zturbo.control import ControlRequest
from zturbo.engine import Engine
from zturbo.generate import ModelFiles, run_request, save_generated
from zturbo.models.configs import DiTConfig
from zturbo.request import GenerationRequest
from zturbo.runtime.memory import GIB, parse_vram
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.controlnet_files import FILE_NAMES, write_controlnet
from zturbo.testing.upscale_files import esrgan_state_dict

SIZE, STEPS = 1024, 8


def test_picture(path: Path) -> Path:
    """A 1024² picture with shapes and a gradient: edges for Canny to find."""
    if not path.is_file():
        ramp = np.linspace(40, 215, SIZE, dtype=np.uint8)
        image = Image.fromarray(np.stack([np.tile(ramp, (SIZE, 1))] * 3, axis=-1))
        draw = ImageDraw.Draw(image)
        rng = np.random.default_rng(3)
        for _ in range(24):
            x, y = (int(v) for v in rng.integers(0, SIZE - 200, 2))
            box = (x, y, x + int(rng.integers(60, 200)), y + int(rng.integers(60, 200)))
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
                box, fill=fill, outline=(0, 0, 0), width=4
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return path


def full_size_files(models_dir: Path) -> tuple[ModelPaths, Path, Path]:
    """The three model files, the ControlNet 2.1 and RealESRGAN_x4plus under their real names."""
    from safetensors.torch import save_file

    paths = write_full_size_models(models_dir)
    controlnet = models_dir / "model_patches" / FILE_NAMES["2.1"]
    if not controlnet.is_file():
        started = time.perf_counter()
        write_controlnet(controlnet, "2.1", DiTConfig(), dtype=torch.bfloat16, device="cuda")
        print(f"wrote {controlnet.name} ({controlnet.stat().st_size / 1e9:.1f} GB) in "
              f"{time.perf_counter() - started:.0f}s", flush=True)  # fmt: skip
    esrgan = models_dir / "upscale_models" / "RealESRGAN_x4plus.safetensors"
    if not esrgan.is_file():
        esrgan.parent.mkdir(parents=True, exist_ok=True)
        save_file(esrgan_state_dict(num_feat=64, num_grow=32, num_blocks=23), str(esrgan))
    return paths, controlnet, esrgan


def settings_for(plan: str) -> tuple[EngineSettings, float | None]:
    """The engine's settings for a plan and the cap in GiB (None: the whole card, no planning)."""
    if plan == "resident":
        return EngineSettings("cuda", "bf16"), None
    gib = parse_vram(plan)
    if gib is None:
        raise SystemExit(f"--plans: {plan!r} is not a card size (give resident, 8G, 4G …)")
    return EngineSettings("cuda", "bf16", vram=plan), gib


def capped(cap_gib: float | None, work: Callable[[], dict]) -> dict:
    """Run `work` with the process limited to `cap_gib` (an overshoot is recorded, not raised)."""
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    if cap_gib is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
    try:
        return work()
    except torch.cuda.OutOfMemoryError as exc:
        return {"error": str(exc).splitlines()[0]}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def timed_runs(run: Callable[[], object], repeats: int) -> dict:
    """Warm-up, then the median and the peaks of the timed runs."""
    started = time.perf_counter()
    run()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    median = synced_median(run, repeats)
    return {
        "warmup_s": round(warmup, 3),
        "end_to_end_s": round(median, 4),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
    }


def generate_row(
    engine: Engine,
    paths: ModelPaths,
    control: ControlRequest | None,
    models_dir: Path,
    out: Path,
    repeats: int,
) -> dict:
    request = GenerationRequest(PROMPT, width=SIZE, height=SIZE, steps=STEPS, seed=1)
    files = ModelFiles(paths.dit.name, paths.text_encoder.name, paths.vae.name)
    marks: dict[str, float] = {}

    def phase(name: str) -> None:
        torch.cuda.synchronize()
        marks[name] = time.perf_counter()

    def run() -> None:
        result = run_request(engine, paths, request, phase=phase, control=control, models_dir=models_dir)
        save_generated(result, files, out, prefix="control" if control else "plain")

    row = timed_runs(run, repeats)
    row["sample_s"] = round(marks["decoding"] - marks["sampling"], 4)  # the last run's sampling phase
    row["fallback"] = _fallback(engine)
    return row


def _fallback(engine: Engine) -> str | None:
    used = engine.memory.plan if engine.memory is not None else None
    return None if used is None else used.level


def generate_rows(args: argparse.Namespace, paths: ModelPaths, controlnet: Path, picture: Path) -> list[dict]:
    control = ControlRequest(picture, "canny", args.strength, controlnet)
    rows = []
    for weights in args.weights.split(","):
        wpaths = dataclasses.replace(paths, dit=dit_file(paths, weights, args.models_dir))
        for plan in args.plans.split(","):
            if weights != "bf16" and plan == "resident":
                continue  # quantized weights are for the small plans
            rows += plan_rows(args, weights, plan, wpaths, control)
    _add_ratios(rows)
    return rows


def plan_rows(
    args: argparse.Namespace, weights: str, plan: str, paths: ModelPaths, control: ControlRequest
) -> list[dict]:
    """Plain and ControlNet rows on one engine (the models load once; the ControlNet is added)."""
    settings, cap = settings_for(plan)
    engine = Engine(settings)
    rows = []
    for name, ctrl in (("txt2img", None), ("controlnet_2.1", control)):
        row = {"job": "generate", "weights": weights, "plan": plan, "control": name,
               "strength": args.strength if ctrl else None, "size": f"{SIZE}x{SIZE}", "steps": STEPS}  # fmt: skip
        row |= capped(
            cap, lambda c=ctrl: generate_row(engine, paths, c, args.models_dir, args.out, args.repeats)
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    engine.free()
    return rows


def _add_ratios(rows: list[dict]) -> None:
    plain = {(r["weights"], r["plan"]): r for r in rows if r["control"] == "txt2img" and "sample_s" in r}
    for row in rows:
        base = plain.get((row["weights"], row["plan"]))
        if row["control"] != "txt2img" and base is not None and "sample_s" in row:
            row["sample_vs_txt2img"] = round(row["sample_s"] / base["sample_s"], 3)
            row["end_to_end_vs_txt2img"] = round(row["end_to_end_s"] / base["end_to_end_s"], 3)


def upscale_rows(args: argparse.Namespace, picture: Path) -> list[dict]:
    from zturbo.graph.run import run_workflow
    from zturbo.workflows import make_context

    input_dir = args.out / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    Image.open(picture).save(input_dir / "fighter_jet.png")  # the name the template loads
    rows = []
    for plan in args.upscale_plans.split(","):
        settings, cap = settings_for(plan)
        context = make_context(settings, models_dir=args.models_dir, output_dir=args.out, input_dir=input_dir)

        def run(context=context) -> None:
            result = run_workflow(args.template, context=context)
            if not result.completed or not result.outputs:
                raise SystemExit(f"the upscaler template failed: {result.error}")

        row = {"job": "upscale_2k_template", "plan": plan, "input": f"{SIZE}x{SIZE}", "output": "2048x2048"}
        row |= capped(cap, lambda run=run: timed_runs(run, args.repeats))
        print(json.dumps(row), flush=True)
        rows.append(row)
        context.engine.free()
    return rows


def default_template() -> Path | None:
    spec = importlib.util.find_spec("comfyui_workflow_templates_json")
    if spec is None or not spec.submodule_search_locations:
        return None
    return (
        Path(next(iter(spec.submodule_search_locations)))
        / "templates"
        / "utility_z_image_turbo_2k_upscaler.app.json"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/zturbo-bench-models"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/zturbo-bench-out"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--plans", default="resident,8G,4G")
    parser.add_argument("--weights", default="bf16,q4_0")
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--upscale-plans", default="resident,8G")
    parser.add_argument("--template", type=Path, default=default_template())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    paths, controlnet, _ = full_size_files(args.models_dir)
    picture = test_picture(args.out / "control_picture.png")
    rows = generate_rows(args, paths, controlnet, picture) if args.plans else []
    if args.upscale_plans:
        if args.template is None or not args.template.is_file():
            raise SystemExit("--template: utility_z_image_turbo_2k_upscaler.app.json not found "
                             "(pip install comfyui-workflow-templates-json, or pass its path)")  # fmt: skip
        rows += upscale_rows(args, picture)
    device = torch.cuda.get_device_name()
    args.results.mkdir(parents=True, exist_ok=True)
    kind = "control" if args.plans else "upscale"  # a run of the upscale rows alone keeps its own file
    out = args.results / f"{dt.date.today().isoformat()}-{device.replace(' ', '_')}-{kind}.json"
    data = {"device": device, "date": dt.date.today().isoformat(), "torch": torch.__version__, "rows": rows}
    out.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
