"""The single worker thread: takes prompts off the queue, runs the executor, records history.

Whatever the executor does (raise, hang on a dead client, get interrupted), the worker records a
result and moves on; a failing job never takes the server down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from zturbo.graph.prompt_run import error_report
from zturbo.server.events import EventHub, preview_frame
from zturbo.server.history import HistoryRecord, HistoryStore
from zturbo.server.journal import QueueJournal
from zturbo.server.protocols import ExecutorLike
from zturbo.server.queue import PromptQueue, QueueItem, RunningJob

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class JobChannel:
    """Routes one job's events to its client and remembers what reconnecting clients need."""

    def __init__(self, hub: EventHub, job: RunningJob) -> None:
        self.hub = hub
        self.prompt_id = job.item.prompt_id
        self.client_id = job.item.client_id
        self.last_node: str | None = None
        # The last `progress` event's (value, max) and when the job started: /sdapi/v1/progress reads them.
        self.step: tuple[int, int] | None = None
        self.started = time.monotonic()
        # End events of this client's other prompts, cancelled while this one ran: sent after its own
        # end, so a client that tracks "the running prompt" (the ComfyUI editor) is not reset mid-job.
        self.after_finish: list[tuple[str, dict]] = []

    def emit(self, event: str, data: dict) -> None:
        if event == "executing":
            self.last_node = data.get("node")
        elif event == "progress":
            self.step = (int(data.get("value", 0)), int(data.get("max", 0)))
        self.hub.send_sync(event, data, self.client_id)

    def finish(self) -> None:
        """`executing` with node None, ComfyUI's "this prompt is done" signal: sent here, exactly once,
        after history is saved (clients fetch /history/{id} when they see it)."""
        self.hub.send_sync("executing", {"node": None, "prompt_id": self.prompt_id}, self.client_id)
        for event, data in self.after_finish:
            self.hub.send_sync(event, data, self.client_id)

    def emit_preview(self, image: bytes) -> None:
        metadata = None
        if self.hub.supports(self.client_id, "supports_preview_metadata") and self.last_node is not None:
            node = self.last_node
            metadata = {
                "node_id": node,
                "prompt_id": self.prompt_id,
                "display_node_id": node,
                "parent_node_id": None,
                "real_node_id": node,
            }
        self.hub.send_frame_sync(preview_frame(image, metadata), self.client_id)


def end_events(prompt_id: str, last: tuple[str, dict]) -> list[tuple[str, dict]]:
    """A prompt's last status event, then ComfyUI's "done" signal (`executing` with node None)."""
    return [last, ("executing", {"node": None, "prompt_id": prompt_id})]


def crash_messages(prompt_id: str, exc: BaseException, started: int) -> tuple[list, dict]:
    """The status messages ComfyUI would record for a prompt whose executor raised."""
    error = {**error_report(prompt_id, exc), "timestamp": now_ms()}
    return [
        ["execution_start", {"prompt_id": prompt_id, "timestamp": started}],
        ["execution_error", error],
    ], error


class QueueWorker:
    """Owns the worker thread. `state` holds `.running_channel` for `/ws` reconnects."""

    def __init__(
        self,
        queue: PromptQueue,
        executor: ExecutorLike,
        history: HistoryStore,
        hub: EventHub,
        previews_for: Callable[[dict], bool] = lambda extra_data: True,
        journal: QueueJournal | None = None,
    ) -> None:
        self.queue, self.executor, self.history, self.hub = queue, executor, history, hub
        self.previews_for = previews_for
        self.journal = journal
        self.channel: JobChannel | None = None
        self._channel_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zturbo-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs (after `stop`: a prompt outlived its timeout)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self.queue.get(timeout=0.5)
            try:
                if job is not None:
                    self._execute(job)
                self._apply_flags()
            except Exception:  # the loop itself must survive anything
                log.exception("worker loop error")

    def announce_end(self, item: QueueItem, events: list[tuple[str, dict]]) -> None:
        """Send a prompt's end events to its client: now, or after the client's running prompt ends."""
        with self._channel_lock:
            channel = self.channel
            if channel is not None and channel.client_id == item.client_id:
                channel.after_finish.extend(events)
                return
        for event, data in events:
            self.hub.send_sync(event, data, item.client_id)

    def _execute(self, job: RunningJob) -> None:
        item, channel = job.item, JobChannel(self.hub, job)
        with self._channel_lock:
            self.channel = channel
        started = now_ms()
        if self.journal is not None:
            try:
                self.journal.started(item.prompt_id, started)
            except Exception:
                log.exception("could not mark %s as running in the queue journal", item.prompt_id)
        record = HistoryRecord(item=item.as_comfy(), start_time=started)
        try:
            result = self.executor.execute(
                item.prompt,
                item.prompt_id,
                outputs=item.outputs,
                extra_data={**item.extra_data, **item.sensitive},
                emit=channel.emit,
                emit_preview=channel.emit_preview if self.previews_for(item.extra_data) else None,
                interrupt=job.interrupt,
            )
            self._fill_from_result(record, result)
        except Exception as exc:
            if self.retry(job, exc):
                return
            log.exception("prompt %s crashed the executor", item.prompt_id)
            messages, error = crash_messages(item.prompt_id, exc, started)
            channel.emit("execution_error", error)
            record.status = {"status_str": "error", "completed": False, "messages": messages}
            record.error = error
        record.end_time = now_ms()
        self._finish(job, record, channel)

    def retry(self, job: RunningJob, exc: Exception) -> bool:
        """Whether a job whose executor raised `exc` was handed back to the queue (a pool's worker
        process died); the single in-process worker never retries."""
        return False

    def channel_for(self, client_id: str) -> JobChannel | None:
        """The running prompt's channel if that prompt is `client_id`'s (for a reconnecting client)."""
        channel = self.channel
        return channel if channel is not None and channel.client_id == client_id else None

    @staticmethod
    def _fill_from_result(record: HistoryRecord, result: Any) -> None:
        outputs = dict(result.outputs or {})
        record.outputs = outputs
        record.meta = getattr(result, "meta", None) or {
            node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
            for node in outputs
        }
        record.status = {
            "status_str": result.status_str,
            "completed": bool(result.completed),
            "messages": [list(m) for m in (result.messages or [])],
        }
        record.interrupted = bool(result.interrupted)
        record.error = (
            result.error
            if isinstance(result.error, dict)
            else ({"exception_message": str(result.error)} if result.error else None)
        )

    def _finish(self, job: RunningJob, record: HistoryRecord, channel: JobChannel) -> None:
        """History first, then the queue, then `executing: null`: clients that react to it by
        fetching `/history/{id}` must find the entry."""
        try:
            self.history.add(record)
        except Exception:
            log.exception("could not save history for %s", record.prompt_id)
        with self._channel_lock:
            self.channel = None
        self.queue.task_done(job)
        channel.finish()

    def _apply_flags(self) -> None:
        flags = self.queue.take_flags()
        free_memory = bool(flags.get("free_memory", False))
        unload = bool(flags.get("unload_models", free_memory))
        if free_memory or unload:
            try:
                self.executor.free(unload_models=unload)
            except Exception:
                log.exception("freeing memory failed")
