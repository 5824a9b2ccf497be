"""LoRA files as users name them: a path or a name in `models/loras`, their content hash, and the
check that runs before any model loads.

The hash recorded with an image is A1111's "autov3" (sha256 of the safetensors file after its
header, first 12 hex digits; what "Lora hashes" in A1111/Civitai metadata holds), cached in
`<models>/.zturbo/hashes.json` like the model files' hashes.
"""

from __future__ import annotations

from pathlib import Path

from zturbo.checkpoints.hashing import cached_sha256
from zturbo.checkpoints.layout import folder_dirs, weight_files
from zturbo.errors import InputError
from zturbo.lora.read import LoraFile, read_lora

LORA_HASH_DIGITS = 12
LORAS = "loras"


def lora_hash(path: Path, models_dir: Path | None) -> str:
    cache = (models_dir or path.parent) / ".zturbo"
    return cached_sha256(path, cache, content_only=True)[:LORA_HASH_DIGITS]


def lora_dirs(models_dir: Path | None) -> list[Path]:
    return folder_dirs(models_dir, LORAS) if models_dir is not None else []


def lora_name(path: Path, models_dir: Path | None) -> str:
    """How LoraLoader names the file: relative to models/loras (posix), else the file name."""
    for base in lora_dirs(models_dir):
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return path.name


def resolve_lora(name: str, models_dir: Path | None, expected_hash: str = "") -> Path:
    """The file `name` means: an existing path, else a name in models/loras (with or without
    `.safetensors`). With `expected_hash` (from an image's metadata) the file must have that hash; if
    the named one differs, another file in models/loras with it is taken."""
    bases = lora_dirs(models_dir)
    candidates = [Path(name)] + [b / n for b in bases for n in (name, f"{name}.safetensors")]
    found = next((c for c in candidates if c.is_file()), None)
    if found is not None and (not expected_hash or lora_hash(found, models_dir) == expected_hash):
        return found
    if expected_hash:
        match = next(
            (p for b in bases for p in weight_files(b) if lora_hash(p, models_dir) == expected_hash), None
        )
        if match is not None:
            return match
        where = f"{found} has hash {lora_hash(found, models_dir)}" if found else "no such file"
        raise InputError(
            f"LoRA {name!r} with hash {expected_hash} not found ({where}; looked in "
            f"{', '.join(map(str, bases)) or 'no models folder'}); put it in models/loras or name another "
            "with --lora"
        )
    looked = ", ".join(str(c) for c in candidates[: 1 + 2 * len(bases)])
    raise InputError(f"LoRA {name!r} not found (looked for: {looked})")


def check_lora(path: Path) -> LoraFile:
    """Read the file now (refusing pickles, corrupt files and LoRAs for other model families with
    one line naming it), so a bad LoRA fails before any model loads. Shapes are checked at load."""
    return read_lora(path)
