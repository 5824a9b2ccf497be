"""`/zturbo/workers`: the worker pool's workers (`serve --workers N` / `--ray ADDRESS`); join and leave.

Without a pool the server has its one in-process worker, listed as such, and nothing to add or remove.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from zturbo.server.deps import State
from zturbo.server.errors import NotFoundError
from zturbo.server.pool import WorkerPool
from zturbo.server.state import ServerState

router = APIRouter(prefix="/zturbo/workers", tags=["workers"])


def _pool(state: ServerState) -> WorkerPool:
    if not isinstance(state.worker, WorkerPool):
        raise NotFoundError("this server runs prompts in-process; start it with --workers N or --ray ADDRESS")
    return state.worker


@router.get("")
def list_workers(state: State) -> dict:
    if not isinstance(state.worker, WorkerPool):
        return {
            "pool": False,
            "workers": [{"name": "in-process", "state": "running" if state.queue.running() else "idle"}],
        }
    return {"pool": True, "workers": state.worker.describe()}


@router.post("")
def add_worker(state: State) -> dict:
    """One more worker; it starts when Ray finds it a free GPU (or CPU) — at once, or when a node joins."""
    return _pool(state).add_worker().describe()


@router.delete("/{name}")
def remove_worker(name: str, state: State) -> Response:
    """The worker leaves after its current prompt."""
    if not _pool(state).remove_worker(name):
        raise NotFoundError(f"no worker named {name!r}")
    return Response(status_code=204)
