"""The models panel: which of the three files are present, and the engine's `models pull` run in a
background thread with progress the page polls.

`pull_models` reports no progress itself; we ask the hub for the file sizes once and count the bytes
that have arrived (finished files in place plus huggingface_hub's partial files in the staging folder).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zturbo.checkpoints.detect import DIT, KIND_LABELS, TEXT_ENCODER, VAE
from zturbo.checkpoints.download import HUB_PREFIX, pull_models
from zturbo.checkpoints.inventory import describe_file
from zturbo.checkpoints.layout import COMFY_FILES, FOLDERS, HUB_REPO, weight_files

log = logging.getLogger(__name__)
KINDS = (DIT, TEXT_ENCODER, VAE)
Pull = Callable[[Path, list[str]], Any]
Sizes = Callable[[list[str]], dict[str, int]]


def inventory(models_dir: Path) -> list[dict[str, Any]]:
    """One entry per component: the files found for it (with what each really is) and whether one fits."""
    components = []
    for kind in KINDS:
        files = []
        for path in (p for folder in FOLDERS[kind] for p in weight_files(models_dir / folder)):
            found, description = describe_file(path)
            files.append(
                {
                    "path": path.relative_to(models_dir).as_posix(),
                    "ok": found == kind,
                    "description": description,
                }
            )
        components.append(
            {
                "kind": kind,
                "label": KIND_LABELS[kind],
                "expected": COMFY_FILES[kind],
                "folders": list(FOLDERS[kind]),
                "present": any(f["ok"] for f in files),
                "files": files,
            }
        )
    return components


def hub_sizes(names: list[str]) -> dict[str, int]:
    """File sizes on the hub (empty when it cannot be reached: `pull_models` then says why)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        infos = HfApi().get_paths_info(HUB_REPO, [HUB_PREFIX + n for n in names])
        return {info.path[len(HUB_PREFIX) :]: int(info.size) for info in infos if isinstance(info, RepoFile)}
    except Exception as exc:  # network errors vary by huggingface_hub version
        log.info("could not read file sizes from the hub: %s", exc)
        return {}


@dataclass
class DownloadStatus:
    state: str = "idle"  # idle | running | done | error
    files: list[str] = field(default_factory=list)
    error: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    current: str | None = None


class ModelDownloads:
    """At most one download run at a time; `status()` may be polled from any thread."""

    def __init__(self, models_dir: Path, pull: Pull = pull_models, sizes: Sizes = hub_sizes) -> None:
        self.models_dir = models_dir
        self._pull, self._sizes = pull, sizes
        self._status = DownloadStatus()
        self._totals: dict[str, int] = {}
        self._lock = threading.Lock()

    def missing(self) -> list[str]:
        return [COMFY_FILES[c["kind"]] for c in inventory(self.models_dir) if not c["present"]]

    def start(self, names: list[str] | None = None) -> dict[str, Any]:
        with self._lock:
            if self._status.state == "running":
                return asdict(self._status)
            names = names if names is not None else self.missing()
            self._status = DownloadStatus(state="running" if names else "done", files=names)
            self._totals = {}
        if names:
            threading.Thread(target=self._run, args=(names,), name="zturbo-models-pull", daemon=True).start()
        return self.status()

    def _run(self, names: list[str]) -> None:
        try:
            totals = self._sizes(names)
            with self._lock:
                self._totals = totals
                self._status.bytes_total = sum(totals.values())
            self._pull(self.models_dir, names)
            with self._lock:
                self._status.state, self._status.current = "done", None
        except Exception as exc:
            log.warning("model download failed: %s", exc)
            with self._lock:
                self._status.state, self._status.error = "error", str(exc)

    def _progress(self, names: list[str]) -> tuple[int, str | None]:
        done, current = 0, None
        for name in names:
            target, total = self.models_dir / name, self._totals.get(name)
            if total and target.is_file() and target.stat().st_size == total:
                done += total
            elif current is None:
                current = name
        staging = self.models_dir / ".zturbo" / "download"
        if staging.is_dir():
            done += sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and _is_partial(p))
        return done, current

    def status(self) -> dict[str, Any]:
        with self._lock:
            if self._status.state == "running" and self._totals:
                self._status.bytes_done, self._status.current = self._progress(self._status.files)
            return asdict(self._status)


def _is_partial(path: Path) -> bool:
    return path.suffix == ".incomplete" or "split_files" in path.parts
