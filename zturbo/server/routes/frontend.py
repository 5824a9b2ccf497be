"""What the ComfyUI frontend asks of a single-user server: `/users`, `/settings`, `/userdata` and
`/v2/userdata` (saved workflows), `/i18n`. Files live under `<user_dir>/default/`, every path checked like `/view`.

Settings are validated before they are written (`json_input.loads`: no lone surrogates, NaN or
nesting that could not be read back), so a bad write is a 400 and `GET /settings`, which the frontend
needs to start, keeps working; a file already spoiled by an older version is read leniently.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from zturbo.errors import InputError
from zturbo.server import json_input, paths
from zturbo.server.deps import Config
from zturbo.server.errors import NotFoundError

log = logging.getLogger(__name__)
router = APIRouter(tags=["frontend"])
SETTINGS_FILE = "comfy.settings.json"
USERS_FILE = "users.json"  # in the user folder, beside `default/`, as ComfyUI keeps it


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
    filename = paths.check_filename(filename)  # before any folder is made for it
    folder = paths.writable_folder(user_root(config), "/".join(folders))
    return paths.contained(user_root(config), folder / filename)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _readable_entries(raw: bytes) -> dict:
    """What can be kept of a settings file an older version spoiled: the entries that round-trip."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    kept = {}
    for key, value in data.items():
        try:
            kept[key] = json_input.loads(json.dumps({key: value}))[key]
        except (InputError, ValueError, RecursionError):
            log.warning("dropping the unreadable setting %r", key.encode("utf-8", "replace"))
    return kept


def _settings(config: Any) -> dict:
    path = user_root(config) / SETTINGS_FILE
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    try:
        data = json_input.loads(raw, "settings file")
    except InputError as exc:
        log.warning("%s: %s; keeping what can be read", path, exc)
        return _readable_entries(raw)
    return data if isinstance(data, dict) else {}


def _save_settings(config: Any, settings: dict) -> None:
    data = json.dumps(settings, ensure_ascii=False).encode("utf-8")
    json_input.loads(data, "settings")  # never write what could not be read back
    _write_atomic(user_root(config) / SETTINGS_FILE, data)


@router.get("/users")
def users() -> dict:
    return {"storage": "server", "migrated": True}


def _users_file(config: Any) -> Path:
    return config.user_dir / USERS_FILE


def _load_users(config: Any) -> dict[str, str]:
    path = _users_file(config)
    if not path.is_file():
        return {}
    try:
        data = json_input.loads(path.read_bytes(), "users file")
    except InputError as exc:
        log.warning("%s: %s; starting a new list", path, exc)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


@router.post("/users")
async def post_users(config: Config, request: Request) -> Any:
    """ComfyUI's new-user call: the id is the name made safe plus a UUID, kept in `users.json`. zturbo
    serves one user (`default`), as ComfyUI without `--multi-user`; the list is kept for the frontend."""
    body = await _json_body(request, "users")
    name = body.get("username") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return JSONResponse({"error": "username not provided"}, status_code=400)
    users_list = _load_users(config)
    if name in users_list.values():
        return JSONResponse({"error": "Duplicate username."}, status_code=400)
    user_id = re.sub("[^a-zA-Z0-9-_]+", "-", name.strip()) + "_" + str(uuid.uuid4())
    data = json.dumps({**users_list, user_id: name}, ensure_ascii=False).encode("utf-8")
    _write_atomic(_users_file(config), data)
    return user_id


@router.get("/i18n")
def i18n() -> dict:
    return {}


@router.get("/settings")
def get_settings(config: Config) -> dict:
    return _settings(config)


async def _json_body(request: Request, what: str) -> Any:
    """The body as JSON whatever the content type (the frontend often sends none), strictly parsed."""
    raw = await request.body()
    return json_input.loads(raw, what) if raw.strip() else None


@router.post("/settings")
async def post_settings(config: Config, request: Request) -> Response:
    body = await _json_body(request, "settings")
    if not isinstance(body, dict):
        raise InputError("settings: expected a JSON object")
    _save_settings(config, {**_settings(config), **body})
    return Response(status_code=200)


@router.get("/settings/{setting_id}")
def get_setting(setting_id: str, config: Config) -> Any:
    return _settings(config).get(setting_id)


@router.post("/settings/{setting_id}")
async def post_setting(setting_id: str, config: Config, request: Request) -> Response:
    value = await _json_body(request, f"setting {setting_id!r}")
    _save_settings(config, {**_settings(config), setting_id: value})
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
    found = base.rglob("*") if recurse else base.glob("*")
    files = sorted(p for p in found if p.is_file() and not paths.is_hidden(p.relative_to(base)))
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


def _v2_entry(path: Path, root: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": path.name, "path": path.relative_to(root).as_posix()}
    if path.is_dir():
        return {**entry, "type": "directory"}
    stat = path.stat()
    return {**entry, "type": "file", "size": stat.st_size, "modified": stat.st_mtime}


@router.get("/v2/userdata")
def list_userdata_v2(config: Config, path: str = "") -> Any:
    """ComfyUI's v2 listing: every folder and file below `path` (recursive), folders first, by name."""
    root = user_root(config)
    parts = paths.check_subfolder(unquote(path)) if path else []
    base = paths.contained(root, root.joinpath(*parts))
    if not base.exists():
        return [] if base == root else Response("Requested path not found", status_code=404)
    if not base.is_dir():
        return Response("Requested path is not a directory", status_code=400)
    found = [p for p in base.rglob("*") if not p.is_symlink() and not paths.is_hidden(p.relative_to(root))]
    entries = [_v2_entry(p, root) for p in found if p.is_dir() or p.is_file()]
    entries.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
    return entries


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
    if path.is_dir():
        return JSONResponse({"error": f"{name} is a folder"}, status_code=409)
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
