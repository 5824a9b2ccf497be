"""`/queue` (list, clear, delete) and `/interrupt`."""

from __future__ import annotations

from fastapi import APIRouter, Response

from zturbo.server.deps import Queue, State
from zturbo.server.schemas import ClearDelete, InterruptRequest

router = APIRouter(tags=["queue"])


@router.get("/queue")
def get_queue(queue: Queue) -> dict:
    return {
        "queue_running": [item.as_comfy() for item in queue.running()],
        "queue_pending": [item.as_comfy() for item in queue.pending()],
    }


@router.post("/queue")
def post_queue(body: ClearDelete, state: State) -> Response:
    """Removed prompts end as `cancelled` (history entry, `execution_interrupted` + `executing` null)."""
    if body.clear:
        state.clear_pending()
    if body.delete:
        state.cancel_pending(body.delete)
    return Response(status_code=200)


@router.post("/interrupt")
def post_interrupt(queue: Queue, body: InterruptRequest | None = None) -> Response:
    """Without `prompt_id`, interrupts whatever runs; with it, only that prompt (ComfyUI semantics)."""
    queue.interrupt(body.prompt_id if body else None)
    return Response(status_code=200)
