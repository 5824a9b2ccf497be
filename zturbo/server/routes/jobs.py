"""`/api/jobs`: the job list current ComfyUI frontends use for their queue and history panels."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from zturbo.server import jobs
from zturbo.server.deps import State
from zturbo.server.routes.prompt import canonical_uuid
from zturbo.server.schemas import CancelJobsRequest

router = APIRouter(tags=["jobs"])


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _int(value: str | None, name: str) -> int | JSONResponse | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return _bad(f"{name} must be an integer")


@router.get("/jobs")
def list_jobs(
    state: State,
    status: str | None = None,
    workflow_id: str | None = None,
    sort_by: str = "created_at",
    sort_order: str = "desc",
    limit: str | None = None,
    offset: str | None = None,
) -> Any:
    statuses = [s.strip().lower() for s in status.split(",") if s.strip()] if status else None
    invalid = [s for s in statuses or [] if s not in jobs.ALL_STATUSES]
    if invalid:
        return _bad(
            f"Invalid status value(s): {', '.join(invalid)}. Valid values: {', '.join(jobs.ALL_STATUSES)}"
        )
    if sort_by.lower() not in jobs.SORT_FIELDS:
        return _bad("sort_by must be 'created_at' or 'execution_duration'")
    if sort_order.lower() not in ("asc", "desc"):
        return _bad("sort_order must be 'asc' or 'desc'")
    lim, off = _int(limit, "limit"), _int(offset, "offset")
    if isinstance(lim, JSONResponse) or isinstance(off, JSONResponse):
        return lim if isinstance(lim, JSONResponse) else off
    if lim is not None and lim <= 0:
        return _bad("limit must be a positive integer")
    off = max(off or 0, 0)
    found, total = jobs.list_jobs(
        state.queue.running(),
        state.queue.pending(),
        state.history.job_rows(),
        statuses=statuses,
        workflow_id=workflow_id,
        sort_by=sort_by.lower(),
        sort_order=sort_order.lower(),
        limit=lim,
        offset=off,
    )
    pagination = {"offset": off, "limit": lim, "total": total, "has_more": off + len(found) < total}
    return {"jobs": found, "pagination": pagination}


@router.get("/jobs/{job_id}")
def get_job(job_id: str, state: State) -> Any:
    entry = state.history.get(job_id)
    if entry is not None:
        job = jobs.finished_job(state.history.job_rows(job_id)[0])
        prompt, extra = entry["prompt"][2], entry["prompt"][3]
        return {
            **job,
            "outputs": entry["outputs"],
            "execution_status": entry["status"],
            "workflow": {"prompt": prompt, "extra_data": extra},
        }
    for items, status in ((state.queue.running(), jobs.IN_PROGRESS), (state.queue.pending(), jobs.PENDING)):
        for item in items:
            if item.prompt_id == job_id:
                return jobs.queued_job(item, status, detail=True)
    return JSONResponse({"error": "Job not found"}, status_code=404)


def _cancel(state: Any, job_id: str) -> bool:
    """Dequeue if pending, interrupt if running; finished or unknown ids are a no-op."""
    return bool(state.cancel_pending([job_id])) or state.queue.interrupt(job_id)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, state: State) -> dict:
    return {"cancelled": _cancel(state, job_id)}


@router.post("/jobs/cancel")
def cancel_jobs(body: CancelJobsRequest, state: State) -> Any:
    invalid = [j for j in body.job_ids if not canonical_uuid(j)]
    if invalid:
        return JSONResponse(
            {"error": "job_ids contains invalid id(s)", "invalid_ids": invalid}, status_code=400
        )
    results = [_cancel(state, j) for j in body.job_ids]
    return {"cancelled": any(results)}
