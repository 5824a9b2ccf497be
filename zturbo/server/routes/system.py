"""Node schemas, machine facts, model lists and `/free`."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib.metadata import PackageNotFoundError, requires, version
from typing import Any

from fastapi import APIRouter, Response

from zturbo.checkpoints import layout
from zturbo.server.deps import Queue, State
from zturbo.server.errors import NotFoundError
from zturbo.server.schemas import FreeRequest

router = APIRouter(tags=["system"])
# The ComfyUI release whose API we follow; frontends read it from /system_stats.
COMFYUI_API_VERSION = "0.18.1"


def _zturbo_version() -> str:
    try:
        return version("zturbo")
    except PackageNotFoundError:
        return "unknown"


def _installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def required_frontend_version() -> str | None:
    """The lowest `comfyui-frontend-package` zturbo's metadata asks for, as x.y.z (the frontend warns
    when it is older); the installed one where zturbo's metadata is not there."""
    try:
        wanted = [r for r in requires("zturbo") or [] if r.startswith("comfyui-frontend-package")]
    except PackageNotFoundError:
        wanted = []
    found = re.search(r">=\s*([0-9][0-9.]*)", wanted[0]) if wanted else None
    if found is None:
        return _installed("comfyui-frontend-package")
    parts = found.group(1).split(".")
    return ".".join((parts + ["0", "0"])[:3])


def _ram() -> tuple[int, int]:
    try:
        import psutil

        mem = psutil.virtual_memory()
        return int(mem.total), int(mem.available)
    except ImportError:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size, os.sysconf("SC_AVPHYS_PAGES") * size


def _devices(ram_total: int, ram_free: int) -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return [
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": ram_total,
                "vram_free": ram_free,
                "torch_vram_total": ram_total,
                "torch_vram_free": ram_free,
            }
        ]
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        reserved = torch.cuda.memory_reserved(index)
        active = torch.cuda.memory_allocated(index)
        devices.append(
            {
                "name": f"cuda:{index} {torch.cuda.get_device_name(index)}",
                "type": "cuda",
                "index": index,
                "vram_total": total,
                "vram_free": free + reserved - active,
                "torch_vram_total": reserved,
                "torch_vram_free": reserved - active,
            }
        )
    return devices


@router.get("/object_info")
def object_info(state: State) -> dict:
    return state.registry.object_info()


@router.get("/object_info/{node_class}")
def object_info_for(node_class: str, state: State) -> dict:
    try:
        return {node_class: state.registry.object_info_for(node_class)}
    except KeyError:
        return {}  # ComfyUI answers an unknown class with an empty object, not 404


@router.get("/system_stats")
def system_stats(state: State) -> dict:
    import torch

    ram_total, ram_free = _ram()
    stats = {
        "system": {
            "os": sys.platform,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": COMFYUI_API_VERSION,
            "zturbo_version": _zturbo_version(),
            "python_version": sys.version,
            "pytorch_version": torch.__version__,
            "embedded_python": False,
            # zturbo has no partner (API) nodes; the ComfyUI frontend reads this flag and then also skips
            # its release-notes call to api.comfy.org, so the editor makes no requests off this machine.
            "argv": [*sys.argv, "--disable-api-nodes"],
            "machine": platform.machine(),
            "required_frontend_version": required_frontend_version(),
            # ComfyUI's field: the `comfyui-workflow-templates` release the templates come from.
            "installed_templates_version": _installed("comfyui-workflow-templates"),
        },
        "devices": _devices(ram_total, ram_free),
    }
    describe = getattr(state.worker, "describe", None)
    if describe is not None:  # a worker pool: each worker, its host and device (`zturbo.server.pool`)
        stats["zturbo_workers"] = describe()
    return stats


@router.get("/features")
def features(state: State) -> dict:
    return state.features()


@router.get("/models")
def model_folders() -> list[str]:
    return list(layout.MODEL_FOLDERS)


@router.get("/models/{folder}")
def model_files(folder: str, state: State) -> list[str]:
    name = layout.canonical_folder(folder)
    if name is None:
        raise NotFoundError(f"unknown model folder {folder!r}")
    return layout.model_names(state.config.models_dir, name)


@router.get("/embeddings")
def embeddings(state: State) -> list[str]:
    files = layout.model_names(state.config.models_dir, "embeddings")
    return [os.path.splitext(name)[0] for name in files]


@router.get("/extensions")
def extensions() -> list[str]:
    return []  # no custom-node web extensions


@router.post("/free")
def free(queue: Queue, body: FreeRequest | None = None) -> Response:
    """Flags for the worker, acted on between prompts (never under a running one)."""
    if body and body.unload_models:
        queue.set_flag("unload_models", True)
    if body and body.free_memory:
        queue.set_flag("free_memory", True)
    return Response(status_code=200)
