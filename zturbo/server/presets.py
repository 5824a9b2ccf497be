"""Style presets: prompt templates with a `{subject}` slot.

A few ship with zturbo (blog covers, tutorial thumbnails, posters with text); the user's own live in
`<user_dir>/default/zturbo.presets.json`, rewritten atomically (temp file + rename) on every change.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from zturbo.errors import InputError
from zturbo.server.errors import NotFoundError

log = logging.getLogger(__name__)
PRESETS_FILE = "zturbo.presets.json"
SLOT = "{subject}"
MAX_USER_PRESETS = 500


class Preset(BaseModel):
    """One style. `width`/`height` (optional) pick the size that suits the style."""

    name: str = Field(min_length=1, max_length=80)
    template: str = Field(min_length=1, max_length=4000)
    negative: str = Field(default="", max_length=4000)
    width: int | None = Field(default=None, ge=16, le=4096, multiple_of=16)
    height: int | None = Field(default=None, ge=16, le=4096, multiple_of=16)

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if SLOT not in value:
            raise ValueError(f"the template needs a {SLOT} slot where your prompt goes")
        return value


BUILTIN: tuple[Preset, ...] = (
    Preset(
        name="Blog cover",
        template="Editorial blog cover illustration of {subject}, clean modern composition, soft gradient "
        "background, generous empty space on the left for a headline, vibrant yet tasteful colours, "
        "high detail",
        width=1280,
        height=720,
    ),
    Preset(
        name="Tutorial thumbnail",
        template="Eye-catching tutorial thumbnail about {subject}, bold flat vector style, thick outlines, "
        "high contrast, bright saturated colours, one large centred subject, crisp edges",
        width=1280,
        height=720,
    ),
    Preset(
        name="Poster with text",
        template='Minimalist poster with the large bold headline text "{subject}" in clean sans-serif '
        "typography at the top, striking central illustration, limited colour palette, print design",
        width=720,
        height=1280,
    ),
    Preset(
        name="Product photo",
        template="Studio product photo of {subject} on a seamless pastel background, softbox lighting, "
        "sharp focus, commercial photography",
        width=1024,
        height=1024,
    ),
    Preset(
        name="Cinematic still",
        template="Cinematic film still of {subject}, dramatic lighting, shallow depth of field, anamorphic "
        "lens, rich colour grading, 35mm film grain",
        width=1920,
        height=1088,
    ),
)


def preset_id(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "preset"


def _as_json(preset: Preset, builtin: bool) -> dict[str, Any]:
    return {"id": preset_id(preset.name), "builtin": builtin, **preset.model_dump()}


class PresetStore:
    """The user's presets, keyed by id (a slug of the name: saving a name again replaces it)."""

    def __init__(self, user_root: Path) -> None:
        self.path = user_root / PRESETS_FILE
        self._lock = threading.Lock()

    def _read(self) -> list[Preset]:
        if not self.path.is_file():
            return []
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return [Preset(**p) for p in raw.get("presets", [])]
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return []

    def _write(self, presets: list[Preset]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"presets": [p.model_dump() for p in presets]}, indent=1, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".presets-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            user = self._read()
        return [_as_json(p, True) for p in BUILTIN] + [_as_json(p, False) for p in user]

    def save(self, preset: Preset) -> dict[str, Any]:
        new_id = preset_id(preset.name)
        if any(preset_id(p.name) == new_id for p in BUILTIN):
            raise InputError(f"{preset.name!r} is a built-in style; pick another name")
        with self._lock:
            presets = [p for p in self._read() if preset_id(p.name) != new_id]
            if len(presets) >= MAX_USER_PRESETS:
                raise InputError(f"at most {MAX_USER_PRESETS} saved styles")
            self._write([*presets, preset])
        return _as_json(preset, False)

    def delete(self, id_: str) -> None:
        if any(preset_id(p.name) == id_ for p in BUILTIN):
            raise InputError("built-in styles cannot be deleted")
        with self._lock:
            presets = self._read()
            kept = [p for p in presets if preset_id(p.name) != id_]
            if len(kept) == len(presets):
                raise NotFoundError(f"no saved style {id_!r}")
            self._write(kept)
