"""Static web UIs on the app: the creator page (`zturbo/web/static/`), the real ComfyUI frontend
(PyPI `comfyui-frontend-package`) at `/comfy/`, and ComfyUI's core workflow templates at `/templates/`.

`zturbo serve --ui creator` (default) puts the creator page at `/`; `--ui comfy` puts the ComfyUI
frontend there and the creator page at `/creator/`.

The ComfyUI frontend derives its API base from the page path: served at `/comfy/` it calls
`/comfy/api/...`, `/comfy/ws` and `/comfy/templates/...`. `ComfyPrefixMiddleware` maps those onto the
real routes, so one set of routes serves both mounts.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from zturbo.errors import InputError
from zturbo.server.config import ServerConfig
from zturbo.web import STATIC_DIR

CREATOR_DIR = STATIC_DIR
COMFY_PREFIX = "/comfy"
# Paths below the frontend's mount that are really API routes (everything else there is a static file).
FORWARDED = ("/api/", "/ws", "/templates/", "/internal/")
# Progress favicons the frontend requests by absolute path, whatever its mount.
FAVICONS = "/assets/images/favicon_progress_16x16"
TEMPLATE_PACKAGES = ("comfyui_workflow_templates_json", "comfyui_workflow_templates")
# The template browser's thumbnails (`/templates/<name>-1.webp`, ...) live in these bundles, which
# `comfyui-workflow-templates` installs; each installed one is searched after the JSON package.
MEDIA_PACKAGES = tuple(
    f"comfyui_workflow_templates_media_{bundle}"
    for bundle in ("image", "api", "video", "other", "assets_01", "assets_02")
)
FAVICON = "/assets/favicon.ico"

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def comfy_frontend_dir(config: ServerConfig) -> Path | None:
    """`--comfy-frontend-dir`, else the installed `comfyui-frontend-package`'s static files."""
    if config.comfy_frontend_dir is not None:
        return config.comfy_frontend_dir if (config.comfy_frontend_dir / "index.html").is_file() else None
    package = _package_dir("comfyui_frontend_package")
    static = package / "static" if package is not None else None
    return static if static is not None and (static / "index.html").is_file() else None


def media_packages() -> list[tuple[str, str]]:
    """The installed template media bundles, as StaticFiles `packages` entries."""
    found = []
    for name in MEDIA_PACKAGES:
        package = _package_dir(name)
        if package is not None and (package / "templates").is_dir() and (package / "__init__.py").is_file():
            found.append((name, "templates"))
    return found


def templates_dir() -> Path | None:
    """ComfyUI's core workflow templates (`index.json` + one JSON per template), when installed."""
    for name in TEMPLATE_PACKAGES:
        package = _package_dir(name)
        if package is not None and (package / "templates" / "index.json").is_file():
            return package / "templates"
    return None


class ComfyPrefixMiddleware:
    """Rewrite `/comfy/api/x`, `/comfy/ws`, ... to `/api/x`, `/ws`, ... before routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope.get("path", "")
            rest = path[len(COMFY_PREFIX) :] if path.startswith(COMFY_PREFIX + "/") else ""
            if rest.startswith(FORWARDED) or rest == "/ws":
                scope = {**scope, "path": rest, "raw_path": rest.encode("latin-1")}
        await self.app(scope, receive, send)


def _redirect_to(target: str) -> Callable[[], RedirectResponse]:
    def redirect() -> RedirectResponse:
        return RedirectResponse(target, status_code=307)

    return redirect


def _file(path: Path) -> Callable[[], FileResponse]:
    def serve() -> FileResponse:
        return FileResponse(path)

    return serve


def mount_web(app: FastAPI, config: ServerConfig) -> None:
    """Mount the UIs; call after every API router is included (mounts at `/` catch everything)."""
    creator = CREATOR_DIR if (CREATOR_DIR / "index.html").is_file() else None
    comfy = comfy_frontend_dir(config)
    if config.ui == "comfy" and comfy is None:
        raise InputError(
            "--ui comfy needs the ComfyUI frontend: pip install comfyui-frontend-package "
            "(or pass the folder of a frontend build as comfy_frontend_dir)"
        )
    templates = templates_dir()
    if templates is not None:
        static = StaticFiles(directory=templates, packages=media_packages())  # type: ignore[arg-type]
        app.mount("/templates", static, name="templates")
    if comfy is not None:
        app.add_api_route(COMFY_PREFIX, _redirect_to(COMFY_PREFIX + "/"), include_in_schema=False)
        app.mount(COMFY_PREFIX, StaticFiles(directory=comfy, html=True), name="comfy")
        favicons = comfy / FAVICONS.lstrip("/")
        if config.ui != "comfy" and favicons.is_dir():  # the frontend asks for these at the site root
            app.mount(FAVICONS, StaticFiles(directory=favicons), name="comfy-favicons")
        favicon = comfy / FAVICON.lstrip("/")
        if config.ui != "comfy" and favicon.is_file():  # its idle favicon, by absolute path too
            app.add_api_route(FAVICON, _file(favicon), include_in_schema=False)
    root = comfy if config.ui == "comfy" else creator
    if config.ui == "comfy" and creator is not None:
        app.add_api_route("/creator", _redirect_to("/creator/"), include_in_schema=False)
        app.mount("/creator", StaticFiles(directory=creator, html=True), name="creator")
    if root is not None:
        app.mount("/", StaticFiles(directory=root, html=True), name="web")
