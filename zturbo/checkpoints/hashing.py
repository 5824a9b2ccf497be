"""File hashes for metadata (A1111-style short sha256), cached so 20 GB are read once, not per image.

The cache lives in `<models dir>/.zturbo/hashes.json`, keyed by path, size and mtime; if the folder is
read-only we simply recompute next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

SHORT = 10


def sha256_file(path: Path, chunk: int = 16 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safetensors_content_sha256(path: Path, chunk: int = 16 << 20) -> str:
    """sha256 of a safetensors file after its header (A1111's "autov3" LoRA hash, first 12 hex digits
    in "Lora hashes"): the same tensors give the same hash whatever the metadata says."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path, cache_dir: Path, content_only: bool = False) -> str:
    """Full sha256 of `path` (`content_only`: of its tensors, `safetensors_content_sha256`),
    remembered in cache_dir/hashes.json."""
    cache_file = cache_dir / "hashes.json"
    stat = path.stat()
    key = f"{'content|' if content_only else ''}{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = safetensors_content_sha256(path) if content_only else sha256_file(path)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        except OSError as exc:
            log.debug("could not write hash cache %s: %s", cache_file, exc)
    return cache[key]


def short_hash(path: Path, cache_dir: Path) -> str:
    """First 10 hex digits of the sha256 for files; "" for folders (diffusers layouts)."""
    return cached_sha256(path, cache_dir)[:SHORT] if path.is_file() else ""
