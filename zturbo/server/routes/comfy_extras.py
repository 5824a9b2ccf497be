"""The rest of what the real ComfyUI frontend asks for at start-up and while editing:
`/global_subgraphs`, `/experiment/models`, `/view_metadata/{folder}`, `/workflow_templates`,
`/node_replacements` and `/userdata/{file}/move/{dest}`. Answers follow ComfyUI's shapes; features
zturbo does not have answer empty."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from zturbo.checkpoints import layout
from zturbo.server import paths
from zturbo.server.deps import Config, State
from zturbo.server.errors import NotFoundError
from zturbo.server.routes.frontend import user_path, user_root

router = APIRouter(tags=["comfy-frontend"])
MAX_HEADER = 100 * 1024 * 1024


@router.get("/global_subgraphs")
def global_subgraphs() -> dict:
    return {}  # no blueprint subgraphs shipped


@router.get("/global_subgraphs/{subgraph_id}")
def global_subgraph(subgraph_id: str) -> Response:
    return JSONResponse({"error": f"no global subgraph {subgraph_id!r}"}, status_code=404)


@router.get("/workflow_templates")
def workflow_templates() -> dict:
    return {}  # templates of custom nodes; the core ones are static files under /templates


@router.get("/node_replacements")
def node_replacements() -> dict:
    return {}


@router.get("/experiment/models")
def model_folders(config: Config) -> list[dict[str, Any]]:
    return [{"name": name, "folders": [str(config.models_dir / name)]} for name in layout.MODEL_FOLDERS]


@router.get("/experiment/models/{folder}")
def folder_models(folder: str, state: State) -> Any:
    name = layout.canonical_folder(folder)
    if name is None:
        return JSONResponse({"error": f"unknown model folder {folder!r}"}, status_code=404)
    files = layout.model_names(state.config.models_dir, name)
    return [{"name": file, "pathIndex": 0} for file in files]


def _safetensors_metadata(path: Any) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise NotFoundError("not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER:
            raise NotFoundError("the safetensors header is too large to read")
        header = json.loads(f.read(length) or b"{}")
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise NotFoundError("the file has no __metadata__")  # ComfyUI: 404
    return header["__metadata__"]


@router.get("/view_metadata/{folder}")
def view_metadata(folder: str, filename: str, config: Config) -> Any:
    """The `__metadata__` of a safetensors model file (404 for other files or unknown folders)."""
    name = layout.canonical_folder(folder)
    if name is None or not filename.endswith((".safetensors", ".sft")):
        raise NotFoundError(f"no metadata for {filename!r}")
    *sub, base = filename.split("/")
    for root in layout.folder_dirs(config.models_dir, name):
        path = paths.readable_file(root, "/".join(sub), base)
        if path.is_file():
            try:
                return _safetensors_metadata(path)
            except (OSError, ValueError):
                raise NotFoundError(f"unreadable metadata in {filename!r}") from None
    raise NotFoundError(f"{filename!r} not found in {name}")


@router.post("/userdata/{file:path}/move/{dest:path}")
def move_userdata(file: str, dest: str, config: Config, overwrite: bool = False) -> Any:
    source, target = user_path(config, file), user_path(config, dest)
    if not source.is_file():
        raise NotFoundError(f"{file} not found")
    if target.is_dir():
        return JSONResponse({"error": f"{dest} is a folder"}, status_code=409)
    if target.exists() and not overwrite:
        return JSONResponse({"error": "file exists"}, status_code=409)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return target.relative_to(user_root(config)).as_posix()
