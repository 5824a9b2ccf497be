"""`/zturbo/presets`: style presets (built-in ones plus the user's, stored under the user dir)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from zturbo.server.app_objects import app_object
from zturbo.server.deps import get_config
from zturbo.server.presets import Preset, PresetStore
from zturbo.server.routes.frontend import user_root

router = APIRouter(prefix="/zturbo/presets", tags=["presets"])


def _store(request: Request) -> PresetStore:
    return app_object(request, "zturbo_presets", lambda: PresetStore(user_root(get_config(request))))


Store = Annotated[PresetStore, Depends(_store)]


@router.get("")
def list_presets(store: Store) -> dict:
    return {"presets": store.all()}


@router.post("")
def save_preset(preset: Preset, store: Store) -> dict:
    return store.save(preset)


@router.delete("/{preset_id}")
def delete_preset(preset_id: str, store: Store) -> Response:
    store.delete(preset_id)
    return Response(status_code=204)
