"""`zturbo enhance` and `zturbo generate --enhance`: the prompt enhancer from the command line.

Only the text encoder is needed (and loaded) to enhance; `generate --enhance` loads it under the
generation's memory plan, so the same loaded encoder then encodes the enhanced prompt.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from zturbo.checkpoints.detect import TEXT_ENCODER
from zturbo.checkpoints.layout import (
    DIFFUSERS_SUBFOLDERS,
    default_models_dir,
    find_component,
    is_diffusers_folder,
    tokenizer_dir,
)
from zturbo.errors import InputError, MissingModelError, ModelFileError
from zturbo.request import GenerationRequest


def text_encoder_source(models_dir: Path | None, model: Path | None, name: str | None) -> tuple[Path, Path]:
    """(text encoder file or folder, tokenizer folder) for `--models-dir`/`--text-encoder` or `--model`."""
    if model is not None:
        if name is not None:
            raise InputError(
                "a diffusers folder (--model) holds its own text encoder: give no --text-encoder"
            )
        if not is_diffusers_folder(model):
            raise ModelFileError(
                model, "is not a diffusers folder (no model_index.json or transformer/ inside)"
            )
        folder = model / DIFFUSERS_SUBFOLDERS[TEXT_ENCODER]
        if not folder.is_dir():
            raise MissingModelError(f"The diffusers folder {model} lacks: {folder}")
        return folder, tokenizer_dir(model)
    return find_component(models_dir or default_models_dir(), TEXT_ENCODER, name), tokenizer_dir(None)


def terminal_writer() -> Callable[[str], None]:
    """Streams text to stdout as it comes (flushed: a pipe sees it too)."""

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    return write


def enhance(
    engine: Any,
    source: tuple[Path, Path],
    idea: str,
    *,
    seed: int,
    max_tokens: int,
    system: str | None,
    on_token: Callable[[str], None] | None,
) -> str:
    """Load the text encoder (cached by the engine) and enhance `idea`."""
    path, tokenizer = source
    engine.tokenizer = engine.tokenizer or tokenizer
    clip = engine.load_text_encoder(path)
    return engine.enhance_prompt(
        clip, idea, seed=seed, max_tokens=max_tokens, system=system, on_token=on_token
    )


def enhanced_request(
    engine: Any,
    text_encoder: Path,
    tokenizer: Path,
    request: GenerationRequest,
    *,
    max_tokens: int,
    system: str | None,
    echo: Callable[[str], None],
) -> GenerationRequest:
    """`request` with its prompt enhanced (seeded by the image's seed) and the idea kept in
    `enhanced_from`; the enhanced prompt is printed as it is written (`echo`)."""
    echo("enhanced prompt: ")
    prompt = enhance(
        engine,
        (text_encoder, tokenizer),
        request.prompt,
        seed=request.seed,
        max_tokens=max_tokens,
        system=system,
        on_token=echo,
    )
    echo("\n")
    return replace(request, prompt=prompt, enhanced_from=request.prompt)


def check_enhance_options(enhance_on: bool, prompt_given: bool, from_png: Path | None) -> None:
    """`--enhance` rewrites the prompt given on this command line (a PNG's prompt is used as it is,
    which is what makes `--from` reproduce an enhanced image)."""
    if enhance_on and not prompt_given:
        raise InputError(
            f"--enhance needs a prompt on the command line (--from {from_png} reuses its own as is)"
        )
