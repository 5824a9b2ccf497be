"""Command line: `zturbo generate | models | run | serve | bench`.

Errors a user can fix (ZTurboError) are printed as one clear message, without a traceback.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from zturbo.errors import InputError, ZTurboError
from zturbo.lora.cli import lora_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run Z-Image-Turbo locally.")
models_app = typer.Typer(help="Show or download the model files.", invoke_without_command=True)
app.add_typer(models_app, name="models")
app.add_typer(lora_app, name="lora")
console = Console(stderr=True)

ModelsDir = Annotated[
    Path | None,
    typer.Option("--models-dir", help="ComfyUI-style models folder [env ZTURBO_MODELS, default ./models]"),
]
DeviceOpt = Annotated[str, typer.Option(help="auto | cuda | mps | cpu")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="auto | bf16 | fp16 | fp32. fp16 is the fp16-safe path (fp32 residual: no overflow). auto: bf16 on "
        "GPUs with bf16, fp16 on GPUs without (RTX 20xx/10xx, T4, older AMD), fp32 on CPU; the VAE decodes "
        "in fp32 where bf16 is missing."
    ),
]
SpeedOpt = Annotated[
    str,
    typer.Option(
        help="reference | eager | compile | max. eager: zturbo's DiT; compile: + torch.compile "
        "(first image at a new size compiles; cache in env ZTURBO_COMPILE_CACHE); max: + CUDA graphs."
    ),
]
StepCacheOpt = Annotated[
    float,
    typer.Option(
        "--step-cache",
        help="Lossy, opt-in step caching (first-block cache): skip most of the DiT on a step whose "
        "first layer changed by less than this fraction since the last full step, e.g. 0.12 "
        "(higher: faster, further from the exact image). 0 = off. Not with --speed reference; "
        "with max, CUDA graphs turn off.",
    ),
]
VramOpt = Annotated[
    str,
    typer.Option(
        help="GPU memory to plan for: auto (free VRAM) | 4G | 6G | 8G | 12G | 16G | 24G | unlimited. "
        "Smaller budgets stream the text encoder and DiT blocks from RAM and tile the VAE."
    ),
]


def main() -> None:
    try:
        app()
    except ZTurboError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what is happening.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _step_progress(label: str):
    """A rich progress bar and a (step, total, preview) callback that advances it."""
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = bar.add_task(label, total=None)

    def update(step: int, total: int, _preview=None) -> None:
        bar.update(task, completed=step, total=total)

    return bar, update


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to draw (any language).")] = None,
    negative: Annotated[str, typer.Option(help="Negative prompt (used when cfg > 1).")] = "",
    width: Annotated[int | None, typer.Option(help="Width, a multiple of 16.")] = None,
    height: Annotated[int | None, typer.Option(help="Height, a multiple of 16.")] = None,
    aspect: Annotated[
        str | None, typer.Option(help="Aspect ratio like 16:9 (instead of width/height).")
    ] = None,
    megapixels: Annotated[float, typer.Option(help="Pixel budget with --aspect (1 = 1024x1024).")] = 1.0,
    steps: Annotated[int, typer.Option()] = 8,
    cfg: Annotated[float, typer.Option(help="ComfyUI cfg: 1 = no guidance (one model call a step).")] = 1.0,
    sampler: Annotated[str, typer.Option()] = "res_multistep",
    scheduler: Annotated[str, typer.Option()] = "simple",
    shift: Annotated[float, typer.Option()] = 3.0,
    seed: Annotated[int | None, typer.Option(help="Random if omitted.")] = None,
    batch: Annotated[int, typer.Option(help="Images per prompt, in one forward pass.")] = 1,
    from_png: Annotated[Path | None, typer.Option("--from", help="Regenerate from a PNG's metadata.")] = None,
    models_dir: ModelsDir = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="A diffusers folder instead of --models-dir.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("output"),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    speed: SpeedOpt = "eager",
    step_cache: StepCacheOpt = 0.0,
    vram: VramOpt = "auto",
    weight_dtype: Annotated[
        str | None,
        typer.Option(
            "--weight-dtype",
            help="default | fp8 (= fp8_e4m3fn) | fp8_e4m3fn_fast | fp8_e5m2: quantize a bf16 DiT on load "
            "(half the VRAM; the main blocks only, like published GGUF files). With --from: the PNG's.",
        ),
    ] = None,
) -> None:
    """Generate images and print the paths of the PNGs written."""
    import secrets

    from zturbo.checkpoints.layout import default_models_dir, resolve_models
    from zturbo.engine import Engine
    from zturbo.generate import model_files, run_request, save_generated, workload_of
    from zturbo.request import GenerationRequest, size_for_aspect
    from zturbo.runtime.settings import EngineSettings

    # Every engine choice is checked here, before any model is read.
    settings = EngineSettings(device, dtype, vram, speed, step_cache, weight_dtype or "default")
    if from_png is not None:
        request, position, recorded = request_from_png(from_png)
        weight_dtype = weight_dtype or recorded
    else:
        if prompt is None:
            raise InputError(
                'give a prompt, e.g. zturbo generate "a red fox in the snow" (or --from IMAGE.png)'
            )
        if aspect is not None and (width or height):
            raise InputError("use either --aspect/--megapixels or --width/--height, not both")
        w, h = size_for_aspect(aspect, megapixels) if aspect else (width or 1024, height or 1024)
        request = GenerationRequest(
            prompt=prompt,
            negative=negative,
            width=w,
            height=h,
            steps=steps,
            cfg=cfg,
            sampler=sampler,
            scheduler=scheduler,
            shift=shift,
            seed=secrets.randbits(63) if seed is None else seed,
            batch=batch,
        )
        position = None
    settings = settings.replace(weight_dtype=weight_dtype or "default")
    paths = resolve_models(models_dir, model)
    engine = Engine(settings)
    plan = engine.prepare(paths, workload_of(request))
    if plan is not None and plan.level != "resident":
        console.print(str(plan), highlight=False)
    bar, update = _step_progress("sampling")
    with bar:
        result = run_request(engine, paths, request, progress=update)
    if position is not None:  # --from: keep only the image that PNG held
        result = replace(result, images=result.images[position : position + 1])
    files = model_files(paths, None if model else (models_dir or default_models_dir()), settings.weight_dtype)
    for path in save_generated(result, files, out):
        typer.echo(str(path))


def request_from_png(path: Path):
    """Settings from a PNG: zturbo's `parameters`, else a ComfyUI `prompt` graph; with the batch
    position (None if unknown) and the recorded DiT weight dtype."""
    import json

    from zturbo.output.metadata import parse_parameters, request_from_api_graph, weight_dtype_from_chunks
    from zturbo.output.png import read_png_text

    text = read_png_text(path)
    weight_dtype = weight_dtype_from_chunks(text)
    if "parameters" in text and "Version: zturbo" in text["parameters"]:
        return (*parse_parameters(text["parameters"]), weight_dtype)
    if "prompt" in text:
        return request_from_api_graph(json.loads(text["prompt"])), None, weight_dtype
    raise InputError(f"{path}: has no zturbo `parameters` or ComfyUI `prompt` metadata to regenerate from")


@models_app.callback()
def models(ctx: typer.Context, models_dir: ModelsDir = None) -> None:
    """List the required files: present or missing, detected kind, dtype and size."""
    if ctx.invoked_subcommand is not None:
        return
    from zturbo.checkpoints.inventory import describe_models

    for line in describe_models(models_dir):
        typer.echo(line)


@models_app.command("pull")
def models_pull(models_dir: ModelsDir = None) -> None:
    """Download the three files from the Comfy-Org/z_image_turbo repository (resumable, hash-checked)."""
    from zturbo.checkpoints.download import pull_models
    from zturbo.checkpoints.layout import default_models_dir

    for path in pull_models(models_dir or default_models_dir()):
        typer.echo(str(path))


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="API- or UI-format workflow JSON, or a PNG holding one.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="NODE.INPUT=VALUE (node id, title or type).")
    ] = None,
    models_dir: ModelsDir = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("output"),
    input_dir: Annotated[Path, typer.Option("--input-dir", help="Folder LoadImage reads from.")] = Path(
        "input"
    ),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    vram: VramOpt = "auto",
    speed: SpeedOpt = "eager",
    step_cache: StepCacheOpt = 0.0,
) -> None:
    """Run a ComfyUI workflow without a server; prints the images written."""
    from zturbo.runtime.settings import EngineSettings
    from zturbo.workflows import run_workflow_cli

    settings = EngineSettings(device, dtype, vram, speed, step_cache)  # a bad value fails before any work
    for path in run_workflow_cli(
        workflow, set_ or [], settings, models_dir=models_dir, out=out, input_dir=input_dir, console=console
    ):
        typer.echo(str(path))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)
def bench(ctx: typer.Context) -> None:
    """GPU benchmark next to diffusers on full-size random weights (see `zturbo bench --help`)."""
    from zturbo.bench.cli import main as bench_main

    bench_main(ctx.args)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8188,
    models_dir: ModelsDir = None,
    output_dir: Annotated[Path, typer.Option("--output-dir")] = Path("output"),
    input_dir: Annotated[Path, typer.Option("--input-dir")] = Path("input"),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    auth_token: Annotated[str | None, typer.Option("--auth-token", help="Required off loopback.")] = None,
    vram: VramOpt = "auto",
    speed: SpeedOpt = "eager",
    step_cache: StepCacheOpt = 0.0,
    ui: Annotated[
        str, typer.Option("--ui", help="Page at /: 'creator' (simple page) or 'comfy' (the ComfyUI editor).")
    ] = "creator",
    preview_method: Annotated[
        str,
        typer.Option(
            "--preview-method", help="Live previews for API clients: none (ComfyUI's default) | auto."
        ),
    ] = "none",
) -> None:
    """Serve the ComfyUI-compatible API and the web UI (the ComfyUI editor is always at /comfy/)."""
    from zturbo.checkpoints.layout import default_models_dir
    from zturbo.runtime.settings import EngineSettings
    from zturbo.server.app import serve as run_server
    from zturbo.server.config import ServerConfig

    config = ServerConfig(
        host=host,
        port=port,
        models_dir=models_dir or default_models_dir(),
        output_dir=output_dir,
        input_dir=input_dir,
        engine=EngineSettings(device, dtype, vram, speed, step_cache),
        auth_token=auth_token,
        preview_method=preview_method,
        ui=ui,  # type: ignore[arg-type]  # checked by ServerConfig
    )
    run_server(config)
