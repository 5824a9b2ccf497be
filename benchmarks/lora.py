"""LoRA cost on full-size random weights: step time with and without a LoRA, and switching LoRAs.

    python benchmarks/lora.py [--models-dir /tmp/zturbo-bench-models] [--weights bf16,q8_0,q4_0]
                              [--speeds eager,max] [--rank 32]

Two rank-r LoRAs (random factors, diffusers/PEFT layout) cover every attention (q, k, v, out) and FFN
(w1, w2, w3) matrix of all 34 blocks (refiners and main layers). For each weights file and speed mode:
the sampling time of a 1024², 8-step job without a LoRA, with LoRA A (bf16: merged into the weights;
GGUF: low-rank side paths), the time the engine takes to apply A the first time, to switch A → B
between jobs, and to take B off again. Times are CUDA-synchronised medians; rows go to
benchmarks/results/<date>-<device>-lora.json with the base rows of the same run beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
from pathlib import Path

import torch

from zturbo.bench.harness import PROMPT, synced_median, write_full_size_models
from zturbo.bench.memory import dit_file
from zturbo.engine import Engine
from zturbo.patches import live
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.lora_files import block_modules, random_factors, write_lora

BLOCKS = {"noise_refiner": 2, "context_refiner": 2, "layers": 30}


def write_loras(folder: Path, shapes: dict, rank: int) -> tuple[Path, Path]:
    modules = [m for group, n in BLOCKS.items() for m in block_modules((group,), tuple(range(n)))]
    paths = []
    for seed, name in ((1, "a"), (2, "b")):
        path = folder / f"lora_{name}_r{rank}.safetensors"
        if not path.is_file():
            factors = random_factors(shapes, modules, rank=rank, alpha=rank / 2, seed=seed, dtype=torch.bfloat16)
            write_lora(path, factors, "diffusers")
        paths.append(path)
    return paths[0], paths[1]


def rows_for(weights: str, speed: str, paths, loras, rank: int, repeats: int) -> dict:
    engine = Engine(EngineSettings("cuda", "bf16", speed=speed))
    model = engine.load_dit(paths.dit)
    clip = engine.load_text_encoder(paths.text_encoder)
    cond = engine.encode_text(clip, PROMPT)
    latent = torch.zeros(1, 16, 128, 128)

    def sample(m) -> None:
        engine.sample(m, cond, None, latent, seed=1, steps=8, cfg=1.0, sampler_name="euler", scheduler="simple")

    sample(model)  # warm-up (compiles in the compile modes)
    base = synced_median(lambda: sample(model), repeats)
    with_a, _ = engine.load_lora(model, None, loras[0], 1.0)
    with_b, _ = engine.load_lora(model, None, loras[1], 1.0)
    first_apply = synced_median(lambda: engine._sync_dit(with_a))
    sample(with_a)  # warm-up after a structure change (side paths: recompiles / recaptures)
    patched = synced_median(lambda: sample(with_a), repeats)
    switch = synced_median(lambda: engine._sync_dit(with_b))
    unload = synced_median(lambda: engine._sync_dit(model))
    state = live.patch_state(model.component)
    row = {
        "weights": weights,
        "speed": speed,
        "rank": rank,
        "size": "1024x1024",
        "steps": 8,
        "base_sample_s": round(base, 4),
        "lora_sample_s": round(patched, 4),
        "lora_vs_base": round(patched / base, 4),
        "first_apply_s": round(first_apply, 3),
        "switch_a_to_b_s": round(switch, 3),
        "unload_s": round(unload, 3),
        "left_after_unload": len(state.backups) + len(state.wrapped),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/zturbo-bench-models"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--weights", default="bf16,q8_0,q4_0")
    parser.add_argument("--speeds", default="eager,max")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    paths = write_full_size_models(args.models_dir)
    shapes = live.reference_shapes(Engine(EngineSettings("cuda", "bf16")).load_dit(paths.dit).component.module)
    torch.cuda.empty_cache()
    loras = write_loras(args.models_dir / "loras", shapes, args.rank)
    rows = []
    for weights in args.weights.split(","):
        wpaths = dataclasses.replace(paths, dit=dit_file(paths, weights, args.models_dir))
        for speed in args.speeds.split(","):
            rows.append(rows_for(weights, speed, wpaths, loras, args.rank, args.repeats))
            gc.collect()  # the row's engine and models are gone: give their memory back
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    device = torch.cuda.get_device_name().replace(" ", "_")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{dt.date.today().isoformat()}-{device}-lora.json"
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
