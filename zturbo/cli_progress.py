"""What the CLI shows while it works: a status line per phase, then a bar with rate and ETA for steps.

On a terminal, rich redraws one line in place. In a log (stderr is not a terminal) every phase is one
plain line and a bar prints at most about ten lines (`step 4/8, 1.2 s/it, ETA 0:00:05`), never `\\r`.
The step bar starts when the first step starts (`start_steps`), not while models load.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.status import Status
from rich.text import Text

LOG_LINES_PER_BAR = 10


def rate_text(seconds_per_step: float | None) -> str:
    """`2.50 it/s`, or `3.2 s/it` when a step takes longer than a second."""
    if not seconds_per_step:
        return "– it/s"
    if seconds_per_step > 1:
        return f"{seconds_per_step:.1f} s/it"
    return f"{1 / seconds_per_step:.2f} it/s"


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02}:{seconds % 60:02}"


def _per_step(task: Task) -> float | None:
    """Mean seconds per finished step so far (known from the first step on)."""
    return task.elapsed / task.completed if task.elapsed and task.completed else None


class RateColumn(ProgressColumn):
    """Steps per second (or seconds per step) of a task."""

    def render(self, task: Task) -> Text:
        return Text(rate_text(_per_step(task)), style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at the mean rate so far."""

    def render(self, task: Task) -> Text:
        per_step = _per_step(task)
        if task.total is None or per_step is None:
            return Text("ETA -:--:--", style="progress.remaining")
        return Text(f"ETA {clock(per_step * (task.total - task.completed))}", style="progress.remaining")


class Display:
    """Phases ("loading models") and step bars for one command; use as a context manager."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal and not console.is_dumb_terminal
        self._status: Status | None = None
        self._bar: Progress | None = None
        self._task: Any = None
        self._label = ""
        self._total = 0
        self._started = 0.0
        self._logged = 0

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def phase(self, text: str) -> None:
        """Show what is happening now (ends a step bar)."""
        self._end_steps()
        if not self.live:
            self.console.print(f"{text}…", highlight=False)
        elif self._status is None:
            self._status = self.console.status(f"{text}…")
            self._status.start()
        else:
            self._status.update(f"{text}…")

    @property
    def stepping(self) -> bool:
        """A step bar is running."""
        return bool(self._label)

    def start_steps(self, label: str, total: int, started: float | None = None) -> None:
        """A bar for `total` steps, timed from `started` (a `time.perf_counter()` value; default now)."""
        self._end_steps()
        self._stop_status()
        self._label, self._total, self._logged = label, total, 0
        self._started = time.perf_counter() if started is None else started
        if self.live:
            self._bar = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(),
                EtaColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()
            if started is not None:  # the steps began before the first report: time them from there
                self._bar.tasks[0].start_time = self._bar.get_time() - (time.perf_counter() - started)
        else:
            self.console.print(f"{label}: {total} steps", highlight=False)

    def step(self, value: int, total: int, _preview: object = None) -> None:
        """The progress callback: `value` of `total` steps done (a bar starts if none is running)."""
        if not self._label:
            self.start_steps("sampling", total)
        self._total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=value, total=total)
            return
        every = max(1, math.ceil(total / LOG_LINES_PER_BAR))
        if value == total or value - self._logged >= every:
            self._logged = value
            elapsed = time.perf_counter() - self._started
            per_step = elapsed / value if value else None
            eta = f", ETA {clock(per_step * (total - value))}" if per_step and value < total else ""
            done = f" in {clock(elapsed)}" if value == total else ""
            self.console.print(
                f"{self._label}: step {value}/{total}, {rate_text(per_step)}{eta}{done}", highlight=False
            )

    def close(self) -> None:
        self._end_steps()
        self._stop_status()

    def _end_steps(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._label = ""

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class WorkflowDisplay:
    """`zturbo run`'s executor events as phases and bars, naming nodes by type: `KSampler (#3)`."""

    def __init__(self, display: Display, node_types: dict[str, str]) -> None:
        self.display = display
        self.node_types = node_types
        self._node_started = time.perf_counter()

    def name(self, node_id: str) -> str:
        node_type = self.node_types.get(str(node_id))
        return f"{node_type} (#{node_id})" if node_type else f"node {node_id}"

    def __call__(self, event: str, data: dict) -> None:
        if event == "executing" and data.get("node"):
            self._node_started = time.perf_counter()
            self.display.phase(f"running {self.name(data['node'])}")
        elif event == "progress":
            if not self.display.stepping:  # reported after the first step: time it from the node's start
                self.display.start_steps(self.name(data["node"]), int(data["max"]), self._node_started)
            self.display.step(int(data["value"]), int(data["max"]))
        elif event == "executing":  # node None: the prompt is done
            self.display.close()
