"""`zturbo lora inspect FILE` and `zturbo lora convert FILE --to comfy|diffusers OUT` (typer sub-app).

Registered by zturbo/cli.py as `app.add_typer(lora_app, name="lora")`. Errors a user can fix are one
line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from zturbo.errors import ModelFileError, ZTurboError

# The LoRA code (torch) is imported inside the commands, so `zturbo --help` stays instant.

lora_app = typer.Typer(help="Inspect or convert LoRA files.", no_args_is_help=True)

ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="Check shapes against this Z-Image diffusion model file (header only)."),
]


def _fail(exc: ZTurboError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@lora_app.command("inspect")
def inspect(file: Path, model: ModelOpt = None) -> None:
    """Print what a LoRA file is and what it would patch, without generating anything."""
    from zturbo.lora.read import read_lora

    try:
        lora = read_lora(file, dit_shapes=dit_shapes_of(model) if model else None)
    except ZTurboError as exc:
        _fail(exc)
        return
    typer.echo(str(lora.report))
    typer.echo(f"sha256: {lora.short_hash()}")


@lora_app.command("convert")
def convert(
    file: Path,
    out: Path,
    to: Annotated[str, typer.Option("--to", help="target layout: comfy | diffusers")],
    skip_unsupported: Annotated[
        bool, typer.Option("--skip-unsupported", help="Write what the target layout can hold; list the rest.")
    ] = False,
    model: ModelOpt = None,
) -> None:
    """Write the LoRA in another layout, exactly, or refuse and say why."""
    from zturbo.lora.convert import convert_lora
    from zturbo.lora.read import read_lora

    try:
        lora = read_lora(file, dit_shapes=dit_shapes_of(model) if model else None)
        result = convert_lora(lora, to)
    except ZTurboError as exc:
        _fail(exc)
        return
    if result.refused and not skip_unsupported:
        lines = [f"  {key}: {why}" for key, why in result.refused]
        typer.echo(
            f"error: {file}: {len(result.refused)} patches cannot be written as {to} "
            "(--skip-unsupported writes the rest):\n" + "\n".join(lines),
            err=True,
        )
        raise typer.Exit(2)
    if not result.tensors:
        _fail(ModelFileError(file, f"nothing in it can be written as {to}"))
    if out.resolve() == file.resolve():
        _fail(ModelFileError(out, "is the input file; choose another output path"))
    result.save(out)
    typer.echo(f"wrote {out} ({len(result.tensors)} tensors, {to} layout)")
    for note in result.notes:
        typer.echo(f"note: {note}")
    for key, why in result.refused:
        typer.echo(f"skipped {key}: {why}")


def dit_shapes_of(path: Path) -> dict[str, tuple[int, ...]]:
    """Reference-layout shapes of a Z-Image DiT file, from its header (any layout zturbo loads)."""
    from zturbo.checkpoints import keymaps
    from zturbo.checkpoints.detect import DIT, detect
    from zturbo.checkpoints.reader import open_checkpoint

    ckpt = open_checkpoint(path)
    found = detect(ckpt)
    if found.kind != DIT:
        raise ModelFileError(path, f"is {found.description}, not a Z-Image diffusion model")
    shapes = keymaps.strip_prefix({k: info.shape for k, info in ckpt.tensors.items()}, found.prefix)
    if found.layout == "comfyui":

        def split(shape, parts):
            return [(shape[0] // parts, *shape[1:])] * parts

        shapes = keymaps.comfy_dit_to_diffusers(shapes, split)
    return shapes  # type: ignore[return-value]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(lora_app())
