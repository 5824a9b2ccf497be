"""The prompt queue: a priority heap shared by HTTP handlers and the one worker thread.

Lower `number` runs first; `front` prompts get a negative number, as in ComfyUI, so they jump ahead of
everything queued normally. Each running prompt gets its own interrupt `Event`, so an interrupt can
never leak onto the next prompt. One worker runs one prompt at a time; a worker pool
(`zturbo.server.pool`) has several running at once, one per worker.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def stored_number(value: float | None) -> int | float | None:
    """A queue number read back from SQLite's REAL column: whole numbers as the ints they were."""
    return int(value) if value is not None and float(value).is_integer() else value


@dataclass
class QueueItem:
    number: int | float  # an int from the counter; a client's own `number` is a float, as in ComfyUI
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]
    # Kept out of `/queue`, `/history` and the database (ComfyUI strips the same keys).
    sensitive: dict = field(default_factory=dict)

    def as_comfy(self) -> list[Any]:
        """ComfyUI's queue item: `[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")


@dataclass
class RunningJob:
    item: QueueItem
    interrupt: threading.Event = field(default_factory=threading.Event)


class PromptQueue:
    """Thread-safe; `on_change` is called (under the lock, so it must not block) after every change."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._lock = threading.RLock()
        self._not_empty = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, QueueItem]] = []
        self._order = itertools.count()
        self._number = itertools.count()
        self._running: list[RunningJob] = []
        self._flags: dict[str, Any] = {}
        self._closed = False
        self.on_change = on_change or (lambda: None)

    def next_number(self, front: bool = False) -> int:
        """ComfyUI's numbering: an integer counter, negated for `front`."""
        with self._lock:
            number = next(self._number)
        return -number if front else number

    def numbers_after(self, number: float) -> None:
        """Continue numbering past `number` (prompts re-queued from the journal keep theirs)."""
        with self._lock:
            self._number = itertools.count(max(int(number) + 1, next(self._number)))

    def put(self, item: QueueItem) -> None:
        with self._lock:
            heapq.heappush(self._heap, (item.number, next(self._order), item))
            self.on_change()
            self._not_empty.notify()

    def get(self, timeout: float | None = None) -> RunningJob | None:
        """Next prompt, now marked running; None on timeout, on `set_flag` or after `close`."""
        with self._not_empty:
            if not self._heap and not self._closed and not self._flags:
                self._not_empty.wait(timeout)
            if not self._heap or self._closed:
                return None
            _, _, item = heapq.heappop(self._heap)
            job = RunningJob(item)
            self._running.append(job)
            self.on_change()
            return job

    def task_done(self, job: RunningJob) -> None:
        with self._lock:
            self._running = [running for running in self._running if running is not job]
            self.on_change()

    def running(self) -> list[QueueItem]:
        with self._lock:
            return [job.item for job in self._running]

    def pending(self) -> list[QueueItem]:
        with self._lock:
            return [entry[2] for entry in sorted(self._heap)]

    def remaining(self) -> int:
        with self._lock:
            return len(self._heap) + len(self._running)

    def contains(self, prompt_id: str) -> bool:
        with self._lock:
            return any(i.prompt_id == prompt_id for i in self.running() + self.pending())

    def remove(self, prompt_ids: list[str]) -> list[QueueItem]:
        """Drop pending prompts; returns those actually removed (running ones need `interrupt`)."""
        wanted = set(prompt_ids)
        with self._lock:
            removed = [e[2] for e in sorted(self._heap) if e[2].prompt_id in wanted]
            if removed:
                self._heap = [e for e in self._heap if e[2].prompt_id not in wanted]
                heapq.heapify(self._heap)
                self.on_change()
            return removed

    def delete(self, prompt_ids: list[str]) -> list[str]:
        return [item.prompt_id for item in self.remove(prompt_ids)]

    def clear(self) -> list[QueueItem]:
        """Drop every pending prompt; returns them."""
        with self._lock:
            removed = [entry[2] for entry in sorted(self._heap)]
            self._heap = []
            self.on_change()
            return removed

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is `prompt_id`; every running one when not given);
        atomic with `task_done`."""
        with self._lock:
            jobs = [j for j in self._running if prompt_id is None or j.item.prompt_id == prompt_id]
            for job in jobs:
                job.interrupt.set()
            return bool(jobs)

    def set_flag(self, name: str, value: Any) -> None:
        with self._lock:
            self._flags[name] = value
            self._not_empty.notify()

    def take_flags(self) -> dict[str, Any]:
        with self._lock:
            flags, self._flags = self._flags, {}
            return flags

    def close(self) -> None:
        """Wake the worker so it can stop; queued prompts stay where they are."""
        with self._lock:
            self._closed = True
            for job in self._running:
                job.interrupt.set()
            self._not_empty.notify_all()
