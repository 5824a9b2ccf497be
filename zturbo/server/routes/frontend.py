"""What the ComfyUI frontend asks of a single-user server: `/users`, `/settings`, `/userdata`
(saved workflows), `/i18n`. Files live under `<user_dir>/default/`, every path checked like `/view`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from zturbo.errors import InputError
from zturbo.server import paths
from zturbo.server.deps import Config
from zturbo.server.errors import NotFoundError

router = APIRouter(tags=["frontend"])
SETTINGS_FILE = "comfy.settings.json"


def user_root(config: Any) -> Path:
    root = config.user_dir / "default"
    root.mkdir(parents=True, exist_ok=True)
    return root


def user_path(config: Any, name: str) -> Path:
    """A file below the user root; `name` may be URL-encoded (`workflows%2Fa.json`)."""
    name = unquote(name)
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise InputError(f"invalid user data path {name!r}")
    *folders, filename = name.split("/")
    folder = paths.writable_folder(user_root(config), "/".join(folders))
    return paths.contained(user_root(config), folder / paths.check_filename(filename))


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _settings(config: Any) -> dict:
    path = user_root(config) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@router.get("/users")
def users() -> dict:
    return {"storage": "server", "migrated": True}


@router.get("/i18n")
def i18n() -> dict:
    return {}


@router.get("/settings")
def get_settings(config: Config) -> dict:
    return _settings(config)


async def _json_body(request: Request, what: str) -> Any:
    """The body as JSON whatever the content type (the frontend often sends none)."""
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: the body is not JSON") from exc


@router.post("/settings")
async def post_settings(config: Config, request: Request) -> Response:
    body = await _json_body(request, "settings")
    if not isinstance(body, dict):
        raise InputError("settings: expected a JSON object")
    _write_atomic(user_root(config) / SETTINGS_FILE, json.dumps({**_settings(config), **body}).encode())
    return Response(status_code=200)


@router.get("/settings/{setting_id}")
def get_setting(setting_id: str, config: Config) -> Any:
    return _settings(config).get(setting_id)


@router.post("/settings/{setting_id}")
async def post_setting(setting_id: str, config: Config, request: Request) -> Response:
    value = await _json_body(request, f"setting {setting_id!r}")
    _write_atomic(
        user_root(config) / SETTINGS_FILE, json.dumps({**_settings(config), setting_id: value}).encode()
    )
    return Response(status_code=200)


@router.get("/userdata")
def list_userdata(config: Config, dir: str = "", recurse: bool = False, full_info: bool = False) -> Any:  # noqa: A002
    if not dir:
        return Response("Directory not provided", status_code=400)
    base = paths.contained(
        user_root(config), user_root(config).joinpath(*paths.check_subfolder(unquote(dir)))
    )
    if not base.is_dir():
        return Response("Directory not found", status_code=404)
    files = sorted(p for p in (base.rglob("*") if recurse else base.glob("*")) if p.is_file())
    if not full_info:
        return [p.relative_to(base).as_posix() for p in files]
    return [
        {
            "path": p.relative_to(base).as_posix(),
            "size": p.stat().st_size,
            "modified": int(p.stat().st_mtime * 1000),
        }
        for p in files
    ]


@router.get("/userdata/{name:path}")
def get_userdata(name: str, config: Config) -> FileResponse:
    path = user_path(config, name)
    if not path.is_file():
        raise NotFoundError(f"{name} not found")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"Content-Disposition": "attachment", "X-Content-Type-Options": "nosniff"},
    )


@router.post("/userdata/{name:path}")
async def post_userdata(
    name: str, request: Request, config: Config, overwrite: bool = True, full_info: bool = False
) -> Any:
    path = user_path(config, name)
    if path.exists() and not overwrite:
        return JSONResponse({"error": "file exists"}, status_code=409)
    _write_atomic(path, await request.body())
    relative = path.relative_to(user_root(config)).as_posix()
    if not full_info:
        return relative
    stat = path.stat()
    return {"path": relative, "size": stat.st_size, "modified": int(stat.st_mtime * 1000)}


@router.delete("/userdata/{name:path}")
def delete_userdata(name: str, config: Config) -> Response:
    path = user_path(config, name)
    if not path.is_file():
        raise NotFoundError(f"{name} not found")
    path.unlink()
    return Response(status_code=204)
