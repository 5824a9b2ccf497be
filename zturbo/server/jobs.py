"""The unified job view behind `/api/jobs`: queued, running and finished prompts in one list."""

from __future__ import annotations

from typing import Any

from zturbo.server.history import JobRow
from zturbo.server.queue import QueueItem

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
)
ALL_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
SORT_FIELDS = ("created_at", "execution_duration")
PREVIEW_KINDS = ("images", "video", "audio", "3d", "text")


def _prune(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if v is not None}


def _workflow_id(extra_data: dict) -> str | None:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow")
    return workflow.get("id") if isinstance(workflow, dict) else None


def queued_job(item: QueueItem, status: str, detail: bool = False) -> dict[str, Any]:
    job = _prune(
        {
            "id": item.prompt_id,
            "status": status,
            "priority": item.number,
            "create_time": item.extra_data.get("create_time"),
            "outputs_count": 0,
            "previewable_outputs_count": 0,
            "workflow_id": _workflow_id(item.extra_data),
        }
    )
    if detail:
        job["workflow"] = {"prompt": item.prompt, "extra_data": item.extra_data}
    return job


def outputs_summary(outputs: dict) -> tuple[int, int, dict | None]:
    """(output count, previewable count, preview): saved (`type: output`) media preferred."""
    count, previewable, preview, fallback = 0, 0, None, None
    for node_id, node_out in outputs.items():
        if not isinstance(node_out, dict):
            continue
        for kind, items in node_out.items():
            if kind == "animated" or not isinstance(items, list):
                continue
            for entry in items:
                if not isinstance(entry, dict):
                    continue
                count += 1
                if kind not in PREVIEW_KINDS:
                    continue
                previewable += 1
                enriched = {**entry, "nodeId": node_id, "mediaType": entry.get("mediaType", kind)}
                if preview is None and entry.get("type") == "output":
                    preview = enriched
                elif fallback is None:
                    fallback = enriched
    return count, previewable, preview or fallback


def history_status(row: JobRow) -> str:
    if row.status_str == "error":
        return CANCELLED if row.interrupted else FAILED
    return COMPLETED


def finished_job(row: JobRow) -> dict[str, Any]:
    count, previewable, preview = outputs_summary(row.outputs)
    return _prune(
        {
            "id": row.prompt_id,
            "status": history_status(row),
            "priority": row.number,
            "create_time": row.create_time,
            "execution_start_time": row.start_time,
            "execution_end_time": row.end_time,
            "execution_error": row.error if not row.interrupted else None,
            "outputs_count": count,
            "previewable_outputs_count": previewable,
            "preview_output": preview,
            "workflow_id": row.workflow_id,
        }
    )


def _duration(job: dict[str, Any]) -> int:
    start, end = job.get("execution_start_time"), job.get("execution_end_time")
    return end - start if start and end else 0


def list_jobs(
    running: list[QueueItem],
    pending: list[QueueItem],
    rows: list[JobRow],
    *,
    statuses: list[str] | None = None,
    workflow_id: str | None = None,
    sort_by: str = "created_at",
    sort_order: str = "desc",
    limit: int | None = None,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    wanted = set(statuses or ALL_STATUSES)
    jobs = [queued_job(i, IN_PROGRESS) for i in running if IN_PROGRESS in wanted]
    jobs += [queued_job(i, PENDING) for i in pending if PENDING in wanted]
    jobs += [job for job in map(finished_job, rows) if job["status"] in wanted]
    if workflow_id:
        jobs = [job for job in jobs if job.get("workflow_id") == workflow_id]
    key = _duration if sort_by == "execution_duration" else (lambda job: job.get("create_time") or 0)
    jobs.sort(key=key, reverse=sort_order == "desc")
    total = len(jobs)
    jobs = jobs[offset:]
    return (jobs[:limit] if limit is not None else jobs), total
