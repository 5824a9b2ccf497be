"""Command line: `zturbo generate | enhance | run | serve | models | bench | doctor | lora`.

Errors a user can fix (ZTurboError) are printed as one clear message, without a traceback. Every
option is checked before a model file is read.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from zturbo.errors import InputError, ZTurboError
from zturbo.lora.cli import lora_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run Z-Image-Turbo locally.")
models_app = typer.Typer(help="Show or download the model files.", invoke_without_command=True)
app.add_typer(models_app, name="models")
app.add_typer(lora_app, name="lora")
console = Console(stderr=True, soft_wrap=True)  # messages stay one line in narrow terminals and logs
log = logging.getLogger("zturbo.cli")

# The names are listed here so that `--help` does not import torch; tests/test_cli.py checks them
# against zturbo.sampling's tables.
SAMPLER_NAMES = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
    "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim",
    "uni_pc", "uni_pc_bh2",
)  # fmt: skip
SCHEDULER_NAMES = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)  # fmt: skip

ModelsDir = Annotated[
    Path | None,
    typer.Option("--models-dir", help="ComfyUI-style models folder [env ZTURBO_MODELS, default ./models]"),
]
DeviceOpt = Annotated[str, typer.Option(help="auto | cuda | cuda:N | mps | cpu")]
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


def _print_version(value: bool) -> None:
    if value:
        from zturbo import __version__

        typer.echo(f"zturbo {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what is happening.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def engine_settings(
    device: str, dtype: str, vram: str, speed: str, step_cache: float, weight_dtype: str = "default"
):
    """The command's EngineSettings, every choice checked now. On the CPU there is no GPU memory to
    plan for: every model stays in RAM (no memory plan), unless a budget is asked for explicitly (the
    GPU plans then run on the CPU, which is how they can be tried without a GPU)."""
    from zturbo.runtime.settings import EngineSettings

    settings = EngineSettings(device, dtype, vram, speed, step_cache, weight_dtype)
    settings.placement.dit_dtype()  # --dtype fp16 is refused here, with the reason, not after loading
    if settings.placement.device.type == "cpu" and vram == "auto":
        log.info("running on the CPU: every model stays in RAM (no GPU memory plan)")
        settings = settings.replace(vram=None)
    return settings


def given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was set on the command line (or by its environment variable)."""
    source = ctx.get_parameter_source(name)  # typer's own copy of click's ParameterSource: compare names
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Argument(help="What to draw (any language).")] = None,
    negative: Annotated[str, typer.Option(help="Negative prompt (used when cfg > 1).")] = "",
    width: Annotated[
        int | None, typer.Option(help="Width, a multiple of 16 (16-4096) [default: 1024]")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Height, a multiple of 16 (16-4096) [default: 1024]")
    ] = None,
    aspect: Annotated[
        str | None, typer.Option(help="Aspect ratio like 16:9 (instead of width/height).")
    ] = None,
    megapixels: Annotated[
        float | None, typer.Option(help="Pixel budget with --aspect or --image (1 = 1024x1024).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Sampling steps (1-1000); the official workflow uses 8.")] = 8,
    cfg: Annotated[float, typer.Option(help="ComfyUI cfg: 1 = no guidance (one model call a step).")] = 1.0,
    sampler: Annotated[
        str, typer.Option(help=f"ComfyUI sampler_name: {', '.join(SAMPLER_NAMES)}.")
    ] = "res_multistep",
    scheduler: Annotated[
        str, typer.Option(help=f"ComfyUI scheduler: {', '.join(SCHEDULER_NAMES)}.")
    ] = "simple",
    shift: Annotated[
        float, typer.Option(help="Timestep shift (ComfyUI's ModelSamplingAuraFlow shift), > 0.")
    ] = 3.0,
    seed: Annotated[int | None, typer.Option(help="0 to 2^64-1; random if omitted.")] = None,
    batch: Annotated[int, typer.Option(help="Images per prompt, in one forward pass (1-64).")] = 1,
    from_png: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Regenerate from a PNG's metadata (zturbo's or ComfyUI's); the prompt and the options "
            "given with it override the PNG's settings.",
        ),
    ] = None,
    models_dir: ModelsDir = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="A diffusers folder instead of --models-dir.")
    ] = None,
    dit: Annotated[
        str | None,
        typer.Option(
            "--dit", help="Diffusion model file by name, as `zturbo models` lists it (UNETLoader's)."
        ),
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option("--text-encoder", help="Text encoder file by name, as `zturbo models` lists it."),
    ] = None,
    vae: Annotated[
        str | None, typer.Option("--vae", help="VAE file by name, as `zturbo models` lists it.")
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
    image: Annotated[Path | None, typer.Option(help=IMAGE_HELP)] = None,
    denoise: Annotated[float, typer.Option(help="With --image: how much to change, 0..1 (see --image).")] = 1.0,
    mask: Annotated[str | None, typer.Option(help=MASK_HELP)] = None,
    mask_grow: Annotated[int, typer.Option(help="Grow the mask by this many pixels (0..64).")] = 8,
    mask_blur: Annotated[int, typer.Option(help="Blur the pasted-back edge by this radius (0..31).")] = 4,
    hires: Annotated[bool, typer.Option("--hires", help="Then upscale 2x and refine (see `zturbo upscale`).")] = False,
    hires_denoise: Annotated[float, typer.Option(help="Denoise of the --hires refine pass.")] = 0.33,
    upscale_model: UpscaleModelOpt = None,
    control: Annotated[
        Path | None,
        typer.Option(
            "--control",
            help="Control image for a Z-Image Fun ControlNet (alibaba-pai Controlnet-Union 1.0/2.0/2.1/Lite/"
            "Tile, from models/model_patches or models/controlnet). Without --width/--height/--aspect the "
            "image's size (multiples of 16) is used.",
        ),
    ] = None,
    control_type: Annotated[
        str,
        typer.Option(
            "--control-type",
            help="canny: edges computed here (ComfyUI's Canny node); tile: a blurred (down- then upscaled) "
            "copy computed here; depth | pose | lineart | raw: the image IS the map (make it with a "
            "preprocessor first: zturbo downloads no preprocessor networks).",
        ),
    ] = "canny",
    control_strength: Annotated[
        float, typer.Option("--control-strength", help="Hint scale (0.65-0.9 typical).")
    ] = 0.75,
    controlnet: Annotated[
        Path | None, typer.Option("--controlnet", help="ControlNet file (default: the first one found).")
    ] = None,
    canny_low: Annotated[float, typer.Option("--canny-low", help="Canny low threshold (0.01-0.99).")] = 0.4,
    canny_high: Annotated[
        float, typer.Option("--canny-high", help="Canny high threshold (0.01-0.99).")
    ] = 0.8,
    lora: Annotated[list[str] | None, typer.Option("--lora", help=LORA_HELP)] = None,
    variety: Annotated[float, typer.Option("--variety", help=VARIETY_HELP)] = 0.0,
    variety_steps: Annotated[
        float,
        typer.Option(
            "--variety-steps", help="With --variety: the fraction of the first steps it acts on (0-1]."
        ),
    ] = 0.3,
    gpus: Annotated[
        int,
        typer.Option(
            "--gpus",
            min=1,
            help="Split each image's DiT over this many local GPUs (context parallel; "
            "CPU processes with --device cpu). Not with --control or --step-cache.",
        ),
    ] = 1,
    enhance: Annotated[
        bool,
        typer.Option(
            "--enhance",
            help="First rewrite the prompt into a detailed description with the text encoder (see `zturbo "
            "enhance`; seeded by --seed); it is printed, drawn, and saved in the PNG with the idea.",
        ),
    ] = False,
    enhance_tokens: Annotated[
        int, typer.Option("--enhance-tokens", help="With --enhance: at most this many tokens (1-1024).")
    ] = 300,
) -> None:
    """Generate images and print the paths of the PNGs written."""
    from zturbo.checkpoints.detect import DIT, TEXT_ENCODER, VAE
    from zturbo.checkpoints.layout import default_models_dir, resolve_models
    from zturbo.cli_enhance import check_enhance_options, enhanced_request
    from zturbo.cli_progress import Display
    from zturbo.engine import Engine
    from zturbo.generate import check_output_folder, model_files, run_request, save_or_keep, workload_of

    # Every choice is checked here, before any model is read.
    check_enhance_options(enhance, prompt is not None, from_png)
    settings = engine_settings(device, dtype, vram, speed, step_cache, weight_dtype or "default")
    options = {name: value for name, value in ctx.params.items() if name in REQUEST_OPTIONS}
    options = {name: value for name, value in options.items() if given(ctx, name) or name == "prompt"}
    request, keep, recorded = build_request(from_png, options)
    settings = settings.replace(weight_dtype=weight_dtype or recorded)
    if control is not None and from_png is None and not {"width", "height", "aspect", "image"} & options.keys():
        request = dataclasses.replace(request, **dict(zip(("width", "height"), _control_size(control), strict=True)))
    engine = Engine(settings)
    request = _with_loras(request, lora)
    request.validate(engine.sampler_names(), engine.scheduler_names())
    check_output_folder(out)
    paths = resolve_models(models_dir, model, {DIT: dit, TEXT_ENCODER: text_encoder, VAE: vae})
    from zturbo.guardrails import apply_defaults, model_variant, warnings_for

    variant = model_variant(str(paths.dit))
    if from_png is None:
        request = apply_defaults(request, variant, options.keys())
    for line in warnings_for(request, variant):
        console.print(f"warning: {line}", highlight=False)
    request = _check_loras(request, models_dir or default_models_dir())
    group = None
    if gpus > 1:  # context parallel: followers exit with this process if it fails (zturbo.parallel)
        from zturbo import parallel

        parallel.check_settings(gpus, settings, control=control is not None, loras=bool(request.loras))
        group = parallel.start(gpus, settings, cpu=device == "cpu")
        parallel.attach(engine, group)

    plan = engine.prepare(paths, workload_of(request))
    if plan is not None and plan.level != "resident":
        console.print(str(plan), highlight=False)
    if enhance:  # under the generation's plan: the same loaded encoder then encodes the result
        request = enhanced_request(
            engine, paths.text_encoder, paths.tokenizer, request, max_tokens=enhance_tokens, system=None,
            echo=lambda text: console.out(text, end="", highlight=False),
        )  # fmt: skip
    control_request = None
    if control is not None:
        from zturbo.control import ControlRequest

        control_request = ControlRequest(
            control, control_type, control_strength, controlnet, canny_low, canny_high
        ).validate()
    with Display(console) as display:

        def phase(name: str) -> None:
            if name == "sampling":
                display.start_steps("sampling", request.steps)
            else:
                display.phase(name)

        upscaler = _upscaler(request.upscale_model, models_dir)
        result = run_request(
            engine, paths, request, progress=display.step, phase=phase, upscale_model=upscaler,
            control=control_request, models_dir=models_dir or default_models_dir(),
        )  # fmt: skip
        if keep is not None:  # --from: only the image that PNG held
            result = result.only(keep)
        display.phase("saving")
        files = model_files(
            paths, None if model else (models_dir or default_models_dir()), settings.weight_dtype
        )
        saved = save_or_keep(result, files, out)
    if group is not None:
        group.close()
    for path in saved:
        typer.echo(str(path))


LORA_HELP = (
    "A LoRA: FILE[:STRENGTH] or FILE:MODEL:CLIP (strength 1 by default, negative allowed; CLIP: the text "
    "encoder's, default the same). A bare name is looked up in models/loras. Repeat for several. With "
    "--from: replaces the PNG's LoRAs."
)


def _with_loras(request, given: list[str] | None):
    """--lora replaces the request's (a --from PNG's) LoRAs."""
    if not given:
        return request
    from zturbo.request import LoraChoice

    return dataclasses.replace(request, loras=tuple(LoraChoice.parse(text) for text in given))


def _check_loras(request, models_dir: Path):
    """Each LoRA found and read now, its report printed, every key it cannot use named."""
    from zturbo.generate import check_loras

    request, files = check_loras(request, models_dir)
    for choice, lora in zip(request.loras, files, strict=True):
        report = lora.report
        console.print(f"LoRA {report.lines()[0]} (strength {choice.strength:g})", highlight=False)
        for line in report.lines()[1:]:
            console.print(f"  {line}", highlight=False)
        if report.unmatched:
            names = ", ".join(key for key, _ in report.unmatched)
            console.print(
                f"[yellow]warning:[/yellow] {lora.path.name}: {len(report.unmatched)} keys matched nothing "
                f"and are not applied: {names}",
                highlight=False,
            )
    return request


IMAGE_OPTIONS = ("image", "denoise", "mask", "mask_grow", "mask_blur", "hires", "hires_denoise", "upscale_model")
REQUEST_OPTIONS = (
    "prompt", "negative", "width", "height", "aspect", "megapixels", "steps", "cfg", "sampler", "scheduler",
    "shift", "seed", "batch", "variety", "variety_steps", *IMAGE_OPTIONS,
)  # fmt: skip
VARIETY_HELP = (
    "Seed variety strength (0 = off; 0.1-0.5 typical): the first steps see the prompt's features plus noise "
    "seeded by the seed, this many times their RMS, so seeds give different pictures of the same prompt."
)


def _control_size(path: Path) -> tuple[int, int]:
    """A control image's size cropped to multiples of 16 (read with the pixel cap of every input)."""
    from zturbo.images import image_size
    from zturbo.request import default_size

    return default_size(*image_size(path, f"--control {path}"))


IMAGE_HELP = (
    "Init image (img2img): sampled from it at --denoise, ComfyUI's way: int(steps/denoise) sigmas, the last "
    "steps+1 run (diffusers' strength = steps/int(steps/denoise)). Without a size it keeps its own, centre-"
    "cropped to multiples of 16; with one it is scaled (Lanczos) to cover it and centre-cropped."
)
MASK_HELP = (
    "Inpaint mask, same size as --image: white = repaint; 'alpha' = the image's transparent pixels. "
    "Pixels outside the grown, blurred mask come back exactly."
)
UpscaleModelOpt = Annotated[
    str | None,
    typer.Option("--upscale-model", help="An upscale_models file (ESRGAN family) for the 2x; default Lanczos."),
]


def image_fields(options: dict) -> dict:
    """The GenerationRequest fields of the image options given (`--hires` is a 2x refine pass)."""
    fields = {k: v for k, v in options.items() if k in ("denoise", "mask_grow", "mask_blur", "hires_denoise")}
    for name in ("image", "mask", "upscale_model"):
        if name in options:
            fields[name] = str(options[name]) if options[name] else ""
    if "hires" in options:
        fields["hires_scale"] = 2.0 if options["hires"] else 1.0
    return fields


def _upscaler(name: str, models_dir: Path | None) -> Path | None:
    from zturbo.checkpoints.layout import default_models_dir
    from zturbo.generate import upscale_model_path

    return upscale_model_path(models_dir or default_models_dir(), name) if name else None


@app.command(name="enhance")
def enhance_command(
    idea: Annotated[str, typer.Argument(help="A short idea, in any language.")],
    seed: Annotated[int, typer.Option(help="Sampling seed: the same seed gives the same text.")] = 0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="At most this many tokens (1-1024).")] = 300,
    system: Annotated[
        str | None, typer.Option(help="Your own system prompt instead of zturbo's (see README).")
    ] = None,
    models_dir: ModelsDir = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="A diffusers folder instead of --models-dir.")
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option("--text-encoder", help="Text encoder file by name, as `zturbo models` lists it."),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    vram: VramOpt = "auto",
) -> None:
    """Rewrite a short idea into a detailed image prompt with the Qwen3 text encoder (no other model),
    streaming it to stdout."""
    from zturbo import cli_enhance
    from zturbo.engine import Engine
    from zturbo.models.prompt_enhancer import check_request

    check_request(idea, max_tokens)
    engine = Engine(engine_settings(device, dtype, vram, "eager", 0.0))
    source = cli_enhance.text_encoder_source(models_dir, model, text_encoder)
    write = cli_enhance.terminal_writer()
    cli_enhance.enhance(engine, source, idea, seed=seed, max_tokens=max_tokens, system=system, on_token=write)
    write("\n")


@app.command()
def upscale(
    image: Annotated[Path, typer.Argument(help="The image to enlarge.")],
    prompt: Annotated[str, typer.Argument(help="What it shows (helps the refine pass).")] = "",
    scale: Annotated[float, typer.Option(help="Enlargement factor.")] = 2.0,
    denoise: Annotated[float, typer.Option(help="How much the refine pass may change (0.15-0.35).")] = 0.33,
    steps: Annotated[int, typer.Option()] = 5,
    sampler: Annotated[str, typer.Option()] = "dpmpp_2m_sde",
    scheduler: Annotated[str, typer.Option()] = "beta",
    seed: Annotated[int | None, typer.Option(help="Random if omitted.")] = None,
    upscale_model: UpscaleModelOpt = None,
    models_dir: ModelsDir = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("output"),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    vram: VramOpt = "auto",
    speed: SpeedOpt = "eager",
) -> None:
    """Enlarge an image and refine it with the model (the official 2K upscaler template's recipe:
    an upscale model or Lanczos, then 5 steps of dpmpp_2m_sde/beta at denoise 0.33)."""
    import secrets

    from zturbo.checkpoints.layout import default_models_dir, resolve_models
    from zturbo.cli_progress import Display
    from zturbo.engine import Engine
    from zturbo.generate import model_files, request_size, run_request, save_or_keep
    from zturbo.request import GenerationRequest

    engine = Engine(engine_settings(device, dtype, vram, speed, 0.0))
    w, h = request_size(None, None, None, None, image)
    request = GenerationRequest(
        prompt=prompt, width=w, height=h, sampler=sampler, scheduler=scheduler, hires_steps=steps,
        seed=secrets.randbits(63) if seed is None else seed, upscale_model=upscale_model or "",
        image=str(image), denoise=0.0, hires_scale=scale, hires_denoise=denoise,
    )  # fmt: skip
    paths = resolve_models(models_dir, None)
    upscaler = _upscaler(request.upscale_model, models_dir)
    with Display(console) as display:
        display.start_steps("refining", request.hires_steps)
        result = run_request(engine, paths, request, progress=display.step, upscale_model=upscaler)
        display.phase("saving")
        saved = save_or_keep(result, model_files(paths, models_dir or default_models_dir()), out)
    for path in saved:
        typer.echo(str(path))




def build_request(from_png: Path | None, options: dict):
    """(request, batch position to keep or None, recorded weight dtype) from `generate`'s options
    (those given on the command line) and, with --from, a PNG whose settings they override."""
    import secrets
    from dataclasses import replace

    from zturbo.generate import request_from_png, request_size
    from zturbo.request import GenerationRequest

    options = {name: value for name, value in options.items() if value is not None}
    if "megapixels" in options and "aspect" not in options and "image" not in options:
        raise InputError(
            "--megapixels sets the size for an --aspect ratio or an --image: give one too (e.g. --aspect 1:1)"
        )
    if {"aspect", "megapixels", "image"} & options.keys() and not ("width" in options and "height" in options):
        width, height, aspect, megapixels = (options.pop(k, None) for k in ("width", "height", "aspect", "megapixels"))
        options["width"], options["height"] = request_size(width, height, aspect, megapixels, options.get("image"))
    options = {k: v for k, v in options.items() if k not in IMAGE_OPTIONS} | image_fields(options)
    if from_png is None:
        if "prompt" not in options:
            raise InputError(
                'give a prompt, e.g. zturbo generate "a red fox in the snow" (or --from IMAGE.png)'
            )
        options.setdefault("seed", secrets.randbits(63))
        return GenerationRequest(**options), None, "default"
    found = request_from_png(from_png)
    changed = {k: v for k, v in options.items() if getattr(found.request, k) != v}
    request = replace(found.request, **options)
    keep = found.position if "batch" not in options else None
    if keep is not None and not 0 <= keep < request.batch:
        raise InputError(
            f"--from {from_png}: its batch position {keep} is outside its batch of {request.batch}"
        )
    if changed:
        was = ", ".join(f"{k} {_shown(getattr(found.request, k))} -> {_shown(v)}" for k, v in changed.items())
        console.print(f"--from {from_png}: overriding {was}", highlight=False)
    return request, keep, found.weight_dtype


def _shown(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


@models_app.callback()
def models(ctx: typer.Context, models_dir: ModelsDir = None) -> None:
    """List the required files: present or missing, detected kind, dtype and size, and which file
    `generate` uses. Exits with 1 when a component has no usable file."""
    if ctx.invoked_subcommand is not None:
        return
    from zturbo.checkpoints.inventory import inventory

    found = inventory(models_dir)
    for line in found.lines:
        typer.echo(line)
    if not found.ready:
        raise typer.Exit(1)


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
    """Run a ComfyUI workflow without a server; prints the images written.

    A workflow file that is not found may name one of the templates shipped with zturbo
    (`image_z_image_turbo.json`, ComfyUI's official Z-Image-Turbo template)."""
    from zturbo.generate import check_output_folder
    from zturbo.templates import find_workflow
    from zturbo.workflows import run_workflow_cli

    settings = engine_settings(device, dtype, vram, speed, step_cache)  # a bad value fails before any work
    workflow = find_workflow(workflow, console)
    check_output_folder(out)
    for path in run_workflow_cli(
        workflow, set_ or [], settings, models_dir=models_dir, out=out, input_dir=input_dir, console=console
    ):
        typer.echo(str(path))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)
def bench(ctx: typer.Context) -> None:
    """GPU benchmark next to diffusers on full-size random weights (see `zturbo bench --help`)."""
    if not {"-h", "--help"} & set(ctx.args):
        import torch

        if not torch.cuda.is_available():
            raise InputError(
                "zturbo bench needs a CUDA GPU, and PyTorch sees none (a CPU-only build of torch, or no "
                "NVIDIA driver); `zturbo doctor` checks what this machine can run"
            )
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
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Server state: history, queue, user settings (default: .zturbo/ next to the output folder).",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host", help="Also answer requests addressed to this host name (repeatable; '*': any)."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", help="Run prompts on N Ray workers: one per GPU (or N CPU workers)."),
    ] = 0,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray", help="Join the Ray cluster at ADDRESS (e.g. 10.0.0.5:6379); pip install zturbo[ray]."),
    ] = None,
    cp: Annotated[
        int,
        typer.Option(
            "--cp",
            min=1,
            help="Split each image's DiT over this many local GPUs (context parallel; CPU processes with "
            "--device cpu). 1: off. Jobs with a DiT LoRA or a ControlNet are refused; not with "
            "--workers/--ray or --step-cache.",
        ),
    ] = 1,
) -> None:
    """Serve the ComfyUI-compatible API and the web UI (the ComfyUI editor is always at /comfy/)."""
    from zturbo.checkpoints.layout import default_models_dir
    from zturbo.server.app import serve as run_server
    from zturbo.server.config import ServerConfig

    config = ServerConfig(
        host=host,
        port=port,
        models_dir=models_dir or default_models_dir(),
        output_dir=output_dir,
        input_dir=input_dir,
        engine=engine_settings(device, dtype, vram, speed, step_cache),
        auth_token=auth_token,
        preview_method=preview_method,
        ui=ui,  # type: ignore[arg-type]  # checked by ServerConfig
        data_dir=data_dir,
        allowed_hosts=tuple(allowed_host or ()),
        workers=workers,
        ray_address=ray_address,
        cp=cp,
    )
    run_server(config)


@app.command()
def mcp(
    models_dir: ModelsDir = None,
    output_dir: Annotated[Path, typer.Option("--output-dir")] = Path("output"),
    input_dir: Annotated[Path, typer.Option("--input-dir")] = Path("input"),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    vram: VramOpt = "auto",
    speed: SpeedOpt = "eager",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Server state (as for serve).")] = None,
) -> None:
    """MCP server over stdio (tools generate_image, enhance_prompt, list_models) for agents."""
    from zturbo.checkpoints.layout import default_models_dir
    from zturbo.server.config import ServerConfig
    from zturbo.server.mcp_stdio import run as run_mcp

    config = ServerConfig(
        models_dir=models_dir or default_models_dir(),
        output_dir=output_dir,
        input_dir=input_dir,
        engine=engine_settings(device, dtype, vram, speed, 0.0),
        data_dir=data_dir,
    )
    run_mcp(config)


@app.command()
def doctor(
    models_dir: ModelsDir = None,
    device: DeviceOpt = "auto",
    self_test: Annotated[
        bool, typer.Option("--self-test/--no-self-test", help="Generate with a tiny random-weight model.")
    ] = True,
) -> None:
    """Check the install: torch, the device, the models folder, and a self-test generate.

    The self-test is a full generate on a tiny random-weight model written to a temporary folder (its
    image is noise). Exits with 1 if a check fails; missing model files are reported, not a failure."""
    from zturbo.doctor import run_doctor

    if not run_doctor(typer.echo, models_dir=models_dir, device=device, generate=self_test):
        raise typer.Exit(1)
