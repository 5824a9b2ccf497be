"""`/zturbo/models`: the models panel (what is present, download what is missing, with progress)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from zturbo.server.app_objects import app_object
from zturbo.server.deps import Config, get_config
from zturbo.server.downloads import ModelDownloads, inventory

router = APIRouter(prefix="/zturbo/models", tags=["models"])


def _downloads(request: Request) -> ModelDownloads:
    return app_object(request, "zturbo_downloads", lambda: ModelDownloads(get_config(request).models_dir))


Downloads = Annotated[ModelDownloads, Depends(_downloads)]


@router.get("")
def models_panel(config: Config, downloads: Downloads) -> dict:
    components = inventory(config.models_dir)
    return {
        "models_dir": str(config.models_dir),
        "components": components,
        "missing": [c["expected"] for c in components if not c["present"]],
        "download": downloads.status(),
    }


@router.get("/download")
def download_status(downloads: Downloads) -> dict:
    return downloads.status()


@router.post("/download")
def start_download(downloads: Downloads) -> dict:
    return downloads.start()
