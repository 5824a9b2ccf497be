"""`/history`: finished prompts from the SQLite store."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from zturbo.server.deps import History
from zturbo.server.schemas import ClearDelete

router = APIRouter(tags=["history"])


@router.get("/history")
def get_history(
    history: History,
    max_items: int | None = Query(default=None, ge=0),
    offset: int | None = None,
) -> dict:
    return history.get_history(max_items=max_items, offset=offset)


@router.get("/history/{prompt_id}")
def get_history_item(prompt_id: str, history: History) -> dict:
    entry = history.get(prompt_id)
    return {prompt_id: entry} if entry is not None else {}


@router.post("/history")
def post_history(body: ClearDelete, history: History) -> Response:
    if body.clear:
        history.clear()
    if body.delete:
        history.delete(body.delete)
    return Response(status_code=200)
