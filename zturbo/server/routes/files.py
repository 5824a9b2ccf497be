"""`/view`, `/upload/image` and `/upload/mask`: every client-named path goes through
`zturbo.server.paths` (the HTTP layer over `zturbo.paths`), every image is size-checked from its header
before anything decodes it (`images.opened`), and uploads must be images."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse, Response
from PIL import Image

from zturbo.errors import InputError
from zturbo.paths import split_annotation
from zturbo.server import json_input, paths
from zturbo.server.deps import Config, State
from zturbo.server.errors import NotFoundError, PayloadTooLargeError
from zturbo.server.images import channel_png, opened, preview_bytes

router = APIRouter(tags=["files"])
CHUNK = 1024 * 1024
# Types a browser would run as active content in our origin: served as downloads only.
ACTIVE_TYPES = (
    "text/html",
    "image/svg+xml",
    "application/javascript",
    "text/javascript",
    "text/xml",
    "application/xml",
    "application/xhtml+xml",
    "text/css",
)


def _disposition(filename: str, attachment: bool = False) -> str:
    safe = filename.replace("\\", "\\\\").replace('"', '\\"')
    return f'{"attachment; " if attachment else ""}filename="{safe}"'


@router.get("/view")
def view(
    state: State,
    filename: str | None = None,
    type: str | None = None,  # noqa: A002 - ComfyUI's query parameter name
    subfolder: str = "",
    preview: str | None = None,
    channel: str | None = None,
) -> Response:
    if filename is None:
        raise NotFoundError("no filename given")
    name, annotated = split_annotation(filename)
    root, _ = paths.root_for(state.folders, annotated or type, "output")
    path = paths.readable_file(root, subfolder, name)
    if not path.is_file():
        raise NotFoundError(f"{name} not found")
    headers = {"Content-Disposition": _disposition(name), "X-Content-Type-Options": "nosniff"}
    limit = state.config.max_image_pixels
    if preview:
        body, media = preview_bytes(path, preview, channel or "", limit)
        return Response(body, media_type=media, headers=headers)
    if channel in ("rgb", "a"):
        return Response(channel_png(path, channel, limit), media_type="image/png", headers=headers)
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media in ACTIVE_TYPES:
        media, headers["Content-Disposition"] = "application/octet-stream", _disposition(name, True)
    return FileResponse(path, media_type=media, headers=headers)


def _same_content(path: Path, upload: UploadFile) -> bool:
    if path.is_symlink() or not path.is_file():  # never read through a link, even to compare
        return False
    ours, theirs = hashlib.sha256(), hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            ours.update(chunk)
    upload.file.seek(0)
    for chunk in iter(lambda: upload.file.read(CHUNK), b""):
        theirs.update(chunk)
    upload.file.seek(0)
    return ours.digest() == theirs.digest()


def _free_name(folder: Path, filename: str, upload: UploadFile) -> tuple[str, bool]:
    """ComfyUI's clash rule: `name (1).ext`, `name (2).ext`, ... unless an identical file is there."""
    stem, ext = os.path.splitext(filename)
    candidate, i = filename, 1
    while os.path.lexists(folder / candidate):
        if _same_content(folder / candidate, upload):
            return candidate, True
        candidate, i = f"{stem} ({i}){ext}", i + 1
    return candidate, False


def _write_atomic(folder: Path, filename: str, upload: UploadFile, limit: int) -> None:
    """Temp file in the same folder, then rename: readers never see half a file, a failed upload
    leaves nothing, and a symlink at the target is replaced rather than written through."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    try:
        size = 0
        upload.file.seek(0)
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: upload.file.read(CHUNK), b""):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"upload over {limit} bytes")
                out.write(chunk)
        os.replace(tmp, folder / filename)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_image(upload: UploadFile, limit: int) -> None:
    """Uploads are images: readable by Pillow and within the pixel limit (read from the header only)."""
    upload.file.seek(0)
    with opened(upload.file, f"uploaded image {upload.filename!r}", limit):
        pass
    upload.file.seek(0)


def _store_upload(
    state: State, config: Config, image: UploadFile, type_: str | None, subfolder: str, overwrite: str | None
) -> dict:
    if not image.filename:
        raise InputError("uploaded image has no filename")
    filename = paths.check_filename(image.filename)
    root, kind = paths.root_for(state.folders, type_, "input")
    folder = paths.writable_folder(root, subfolder)
    _check_image(image, config.max_image_pixels)
    duplicate = False
    if overwrite not in ("true", "1"):
        filename, duplicate = _free_name(folder, filename, image)
    else:
        paths.contained(root, folder / filename)
    if (folder / filename).is_dir():
        raise InputError(f"{filename!r} is a folder in {kind}; pick another name")
    if not duplicate:
        _write_atomic(folder, filename, image, config.max_upload_bytes)
    return {"name": filename, "subfolder": subfolder, "type": kind}


@router.post("/upload/image")
def upload_image(
    state: State,
    config: Config,
    image: Annotated[UploadFile, File()],
    type: Annotated[str | None, Form()] = None,  # noqa: A002 - ComfyUI's form field name
    subfolder: Annotated[str, Form()] = "",
    overwrite: Annotated[str | None, Form()] = None,
) -> dict:
    return _store_upload(state, config, image, type, subfolder, overwrite)


def _masked(original: Path, mask: UploadFile, limit: int) -> bytes:
    """ComfyUI's `/upload/mask`: the original image with the mask's alpha as its alpha, as PNG."""
    with opened(original, original.name, limit) as img:
        out = img.convert("RGBA")
    mask.file.seek(0)
    with opened(mask.file, "mask", limit) as m:
        alpha = m.convert("RGBA").getchannel("A").resize(out.size, Image.Resampling.LANCZOS)
    out.putalpha(alpha)
    buffer = BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


@router.post("/upload/mask")
def upload_mask(
    state: State,
    config: Config,
    image: Annotated[UploadFile, File()],
    original_ref: Annotated[str, Form()],
    type: Annotated[str | None, Form()] = None,  # noqa: A002 - ComfyUI's form field name
    subfolder: Annotated[str, Form()] = "",
    overwrite: Annotated[str | None, Form()] = None,
) -> dict:
    """The mask editor's save: `image` holds the mask (alpha), `original_ref` names the image it edits."""
    ref = json_input.loads(original_ref, "original_ref")
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise InputError('original_ref: expected {"filename": ..., "subfolder": ..., "type": ...}')
    name, annotated = split_annotation(ref["filename"])
    root, _ = paths.root_for(state.folders, annotated or ref.get("type"), "output")
    original = paths.readable_file(root, str(ref.get("subfolder") or ""), name)
    if not original.is_file():
        raise NotFoundError(f"original image {name} not found")
    data = _masked(original, image, config.max_image_pixels)
    if len(data) > config.max_upload_bytes:
        raise PayloadTooLargeError(f"masked image over {config.max_upload_bytes} bytes")
    masked = UploadFile(BytesIO(data), filename=image.filename)
    return _store_upload(state, config, masked, type, subfolder, overwrite)
