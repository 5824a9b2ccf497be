"""`/internal/*`, what ComfyUI serves for its own frontend: the Logs panel (`/internal/logs`,
`/internal/logs/raw`, `PATCH /internal/logs/subscribe`), `/internal/folder_paths` and
`/internal/files/{output|input|temp}`. Shapes as in ComfyUI's `internal_routes.py`."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from zturbo.checkpoints import layout
from zturbo.errors import InputError
from zturbo.server import paths
from zturbo.server.compat import parsed_body
from zturbo.server.deps import State

router = APIRouter(prefix="/internal", tags=["internal"])


@router.get("/logs")
def logs(state: State) -> str:
    return state.logs.text()


@router.get("/logs/raw")
def raw_logs(state: State) -> dict[str, Any]:
    return state.logs.raw()


@router.patch("/logs/subscribe")
def subscribe_logs(request: Request, state: State) -> Response:
    _, body = parsed_body(request.scope)
    if not isinstance(body, dict) or not isinstance(body.get("clientId"), str):
        raise InputError('logs/subscribe: expected {"clientId": "<websocket client id>", "enabled": true}')
    state.logs.subscribe(body["clientId"], bool(body.get("enabled")))
    return Response(status_code=200)


@router.get("/folder_paths")
def folder_paths(state: State) -> dict[str, list[str]]:
    models = state.config.models_dir
    return {name: [str(d) for d in layout.folder_dirs(models, name)] for name in layout.MODEL_FOLDERS}


@router.get("/files/{directory_type}")
def files(directory_type: str, state: State) -> Any:
    """The files directly in output, input or temp, newest first (hidden ones never listed)."""
    root = state.folders.get(directory_type)
    if root is None:
        return JSONResponse({"error": "Invalid directory type"}, status_code=400)
    if not root.is_dir():
        return []
    with os.scandir(root) as scan:
        found = [e for e in scan if e.is_file(follow_symlinks=False) and _listable(e.name)]
    found.sort(key=lambda e: -e.stat().st_mtime)
    return [e.name for e in found]


def _listable(name: str) -> bool:
    """Names `/view` would serve: not hidden, valid Unicode, not too long."""
    try:
        paths.check_part(name, "file name")
    except Exception:
        return False
    return True
