"""Prompt enhancer speed at batch 1 on full-size random Qwen3-4B weights (bf16; speed only).

    python benchmarks/enhance.py [--tokens 200] [--host-tokens 32] [--repeats 3]
    python benchmarks/enhance.py --tiny        # the script itself, on the CPU, in seconds (tests)

The encoder is built in memory (no file written) and run where `Engine.enhance_prompt` runs it:

- `resident` (the plans where the text encoder sits in VRAM): prefill of a ~30-token idea inside
  zturbo's system prompt and chat template, then `--tokens` decoded tokens on the GPU (KV cache).
- `streamed` (the small-GPU plans): prefill once through the two GPU slots from pinned RAM, then
  `--host-tokens` decoded on the CPU from the host copy, as the engine does.
- `streamed_gpu_decode`: for comparison only, what decoding through the slots would cost (every layer
  copied to the GPU per token): the reason the engine decodes on the CPU there.

Stop tokens are ignored so every run decodes exactly the asked length. Prefill is the median of
`--repeats`; tokens/s is tokens over wall time (CUDA-synchronised). Needs no diffusers. Writes
benchmarks/results/<date>-<device>-enhance.json with the command line and the rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer

from zturbo.checkpoints.layout import tokenizer_dir
from zturbo.models.configs import TextEncoderConfig
from zturbo.models.prompt_enhancer import PromptEnhancer, Sampling
from zturbo.runtime import residency
from zturbo.runtime.graphs import GraphCache
from zturbo.runtime.memory import Residence
from zturbo.testing.synthetic import TINY_TEXT_ENCODER, build_random_text_encoder

IDEA = "a misty mountain lake at sunrise, a small red wooden boat, pine forest, soft golden light"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(config: TextEncoderConfig, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Random weights drawn on `device` (seconds for 4B on a GPU), loaded into a Qwen3Model there."""
    model, state = build_random_text_encoder(config, seed=1, dtype=dtype, device=device.type)
    model.load_state_dict(state, assign=True)
    return model.to(device).eval()


def measure(enhancer: PromptEnhancer, ids: list[int], tokens: int, where: dict, repeats: int) -> dict:
    """Prefill (median of `repeats`) and decode of `tokens` tokens; `where` gives the devices and the
    context managers the engine uses for each phase."""
    module, gpu = enhancer.model, where["prefill"]
    prefills = []
    for _ in range(repeats):
        with where["prefill_ctx"](module):
            synchronize(gpu)
            started = time.perf_counter()
            state = enhancer.prefill(ids, gpu)
            synchronize(gpu)
        prefills.append(time.perf_counter() - started)
    with where["decode_ctx"](module) as device:
        synchronize(gpu)
        started = time.perf_counter()
        _, out = enhancer.decode(
            state, device, seed=0, max_new_tokens=tokens, sampling=Sampling(), stop=frozenset()
        )
        synchronize(gpu)
        decode = time.perf_counter() - started
    return {
        "prompt_tokens": len(ids),
        "prefill_s": round(statistics.median(prefills), 4),
        "decode_tokens": len(out),
        "decode_s": round(decode, 3),
        "tokens_per_s": round(len(out) / decode, 2),
        "decode_device": str(device),
    }


def paths(gpu: torch.device) -> dict[str, dict]:
    """The three ways to run, as (prefill device, prefill context, decode context)."""

    def where_weights_are(module):  # the engine's choice: the device, or the host copy when streamed
        return residency.text_encoder_on_host(module)

    def ready(module):
        return residency.text_encoder_ready(module, gpu)

    class OnSlots:  # decoding through the slots: each token's forward streams every layer
        def __init__(self, module):
            self.module = module

        def __enter__(self):
            self.inner = residency.text_encoder_ready(self.module, gpu)
            self.inner.__enter__()
            return gpu

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    return {
        "resident": {"prefill": gpu, "prefill_ctx": ready, "decode_ctx": where_weights_are},
        "streamed": {"prefill": gpu, "prefill_ctx": ready, "decode_ctx": where_weights_are},
        "streamed_gpu_decode": {"prefill": gpu, "prefill_ctx": ready, "decode_ctx": OnSlots},
    }


def run(args: argparse.Namespace) -> list[dict]:
    gpu = torch.device("cpu" if args.tiny else "cuda")
    config = TINY_TEXT_ENCODER if args.tiny else TextEncoderConfig()
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model = build(config, dtype, gpu)
    tokenizer = Tokenizer.from_file(str(tokenizer_dir(None) / "tokenizer.json"))
    graphs = None if args.no_graphs else (lambda step: GraphCache(step, "decode step"))  # as the engine
    enhancer = PromptEnhancer(model, tokenizer, graphs)
    ids = enhancer.prompt_ids(IDEA)
    rows = []
    lengths = {"resident": args.tokens, "streamed": args.host_tokens, "streamed_gpu_decode": args.slot_tokens}
    for name, where in paths(gpu).items():
        if name != "resident":  # the small-GPU plans: all of it in (pinned) RAM, streamed per use
            residency.place_text_encoder(model, Residence(streamed=True, pinned=gpu.type == "cuda"), gpu)
        row = {"path": name, **measure(enhancer, ids, lengths[name], where, args.repeats)}
        if gpu.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200, help="decoded tokens, resident")
    parser.add_argument("--host-tokens", type=int, default=32, help="decoded tokens on the CPU (streamed)")
    parser.add_argument("--slot-tokens", type=int, default=4, help="decoded tokens through the slots")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-graphs", action="store_true", help="resident decode without CUDA graphs")
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (tests the script)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    rows = run(args)
    device = "cpu" if args.tiny else torch.cuda.get_device_name()
    report = {
        "device": device,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["enhance.py", *argv]),
        "torch": torch.__version__,
        "weights": "tiny fp32 (random)" if args.tiny else "Qwen3-4B bf16 (random: speed only)",
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{dt.date.today().isoformat()}-{device.replace(' ', '_')}-enhance.json"
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
