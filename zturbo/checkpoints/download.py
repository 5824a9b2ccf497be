"""`zturbo models pull`: the three ComfyUI files from Comfy-Org/z_image_turbo.

huggingface_hub does the transfer (progress bars, resume of partial downloads kept under
`<models>/.zturbo/download`); we then check each file's sha256 against the hub's LFS record before moving
it into its ComfyUI folder. Files already present with the right size are left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from zturbo.checkpoints.hashing import cached_sha256
from zturbo.checkpoints.layout import COMFY_FILES, HUB_REPO
from zturbo.errors import ModelFileError, ZTurboError

log = logging.getLogger(__name__)

HUB_PREFIX = "split_files/"


class DownloadError(ZTurboError):
    """The hub could not be reached or a download failed."""


def _remote_files(api, names: list[str]) -> dict[str, Any]:
    infos = api.get_paths_info(HUB_REPO, [HUB_PREFIX + n for n in names])
    return {info.path[len(HUB_PREFIX) :]: info for info in infos}


def pull_models(models_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Download missing files into `models_dir`; return the paths of all requested files."""
    from huggingface_hub import HfApi, hf_hub_download

    names = names or list(COMFY_FILES.values())
    staging = models_dir / ".zturbo" / "download"
    try:
        remote = _remote_files(HfApi(), names)
    except Exception as exc:  # network stack errors vary by huggingface_hub version
        raise DownloadError(
            f"could not reach the Hugging Face hub to download {HUB_REPO} ({type(exc).__name__}: {exc}). "
            "Are you offline? You can also copy the three files from a ComfyUI install into "
            f"{models_dir.resolve()} (see `zturbo models`)."
        ) from exc
    paths = []
    for name in names:
        target = models_dir / name
        info = remote.get(name)
        if info is None:
            raise DownloadError(f"{HUB_PREFIX}{name} is not in {HUB_REPO} any more; please report this")
        if target.is_file() and target.stat().st_size == info.size:
            paths.append(target)
            continue
        log.info("downloading %s (%.1f GB)", name, info.size / 1e9)
        try:
            fetched = Path(hf_hub_download(HUB_REPO, HUB_PREFIX + name, local_dir=staging))
        except Exception as exc:
            raise DownloadError(
                f"downloading {name} failed ({exc}); run the command again to resume"
            ) from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(fetched, target)
        expected = getattr(getattr(info, "lfs", None), "sha256", None)
        if expected and cached_sha256(target, models_dir / ".zturbo") != expected:
            target.unlink(missing_ok=True)
            raise ModelFileError(
                target, "sha256 does not match the hub's; the download was corrupted, try again"
            )
        paths.append(target)
    return paths
