"""A pool of workers on Ray (`zturbo serve --workers N` / `--ray ADDRESS`).

The server keeps its one queue, journal and SQLite history; each pool slot is a `QueueWorker` thread
whose executor is a Ray actor (`zturbo.server.pool_actor.PoolActor`, one model copy per GPU or CPU
slot, models loaded once and cached by that actor's engine). A slot takes a prompt only once its actor
is up, forwards the actor's events to the prompt's client, passes interrupts on, and writes the
returned files into the server's folders. A worker that dies mid-prompt is replaced; its prompt is
queued again once, and fails with a clear error if its worker dies a second time. Workers join and
leave: `add_worker` / `remove_worker`, and Ray places a pending actor when a node with a free
GPU joins the cluster.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from zturbo.errors import InputError
from zturbo.graph.prompt_run import ExecutionResult
from zturbo.server.config import ServerConfig
from zturbo.server.events import EventHub
from zturbo.server.history import HistoryStore
from zturbo.server.journal import QueueJournal
from zturbo.server.pool_actor import PoolActor, WorkerSpec
from zturbo.server.pool_outputs import publish_outputs
from zturbo.server.protocols import Emit, EmitPreview
from zturbo.server.queue import PromptQueue, QueueItem, RunningJob
from zturbo.server.worker import JobChannel, QueueWorker

log = logging.getLogger(__name__)
POLL_S = 0.05  # how often a slot fetches its actor's events while a prompt runs


class WorkerLost(RuntimeError):
    """The worker process running a prompt died (killed, out of memory, its node left the cluster)."""


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--workers/--ray need Ray: pip install 'zturbo[ray]'") from None
    return ray


class RemoteExecutor:
    """`ExecutorLike.execute` on one actor; `restart` replaces a dead actor with a fresh one."""

    def __init__(self, make_actor: Callable[[], Any], folders: dict, name: str) -> None:
        self.make_actor, self.folders, self.name = make_actor, folders, name
        self.actor = make_actor()
        self.info: dict[str, Any] = {}

    def wait_ready(self, stop: threading.Event) -> bool:
        """Block until the actor answers (it may wait for a free GPU); False if `stop` was set."""
        ray = ray_module()
        ref = self.actor.info.remote()
        while not stop.is_set():
            ready, _ = ray.wait([ref], timeout=0.5)
            if ready:
                try:
                    self.info = ray.get(ref)
                    return True
                except ray.exceptions.RayError:
                    if stop.is_set():  # ended on purpose (the worker was removed)
                        return False
                    log.exception("%s failed to start; starting it again", self.name)
                    self.restart()
                    ref = self.actor.info.remote()
        return False

    def restart(self) -> None:
        ray = ray_module()
        with contextlib.suppress(Exception):  # dead already
            ray.kill(self.actor, no_restart=True)
        self.info = {}
        self.actor = self.make_actor()

    def execute(
        self,
        prompt: dict,
        prompt_id: str,
        *,
        outputs: list[str],
        extra_data: dict,
        emit: Emit,
        emit_preview: EmitPreview | None,
        interrupt: threading.Event | None,
    ) -> ExecutionResult:
        ray = ray_module()
        try:
            ref = self.actor.run.remote(prompt, prompt_id, outputs, extra_data, emit_preview is not None)
            self._follow(ref, prompt_id, emit, emit_preview, interrupt)
            body = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise WorkerLost(
                f"{self.name} ({self.info.get('device', '?')}) died while running the prompt"
            ) from exc
        files = body.pop("files", [])
        body["outputs"] = publish_outputs(body.get("outputs") or {}, files, self.folders)
        return ExecutionResult(**body)

    def _follow(
        self, ref: Any, prompt_id: str, emit: Emit, preview: EmitPreview | None, interrupt: Any
    ) -> None:
        """Forward events until the prompt is done (then once more, for the last ones)."""
        ray, asked = ray_module(), False
        while True:
            ready, _ = ray.wait([ref], timeout=POLL_S)
            if interrupt is not None and interrupt.is_set() and not asked:
                self.actor.interrupt.remote(prompt_id)
                asked = True
            for event, data in ray.get(self.actor.poll.remote()):
                if event == "preview":
                    if preview is not None:
                        preview(data)
                else:
                    emit(event, data)
            if ready:
                return

    def validate(self, prompt: dict, partial_targets: list[str] | None = None) -> Any:
        raise NotImplementedError("the server validates prompts itself")

    def free(self, unload_models: bool) -> None:
        ray_module().get(self.actor.free.remote(unload_models))


class PoolSlot(QueueWorker):
    """One worker's thread: a `QueueWorker` whose executor runs on its Ray actor."""

    executor: RemoteExecutor

    def __init__(self, pool: WorkerPool, executor: RemoteExecutor) -> None:
        super().__init__(pool.queue, executor, pool.history, pool.hub, pool.previews_for, pool.journal)
        self.pool = pool
        self.completed = 0  # prompts this worker finished (any status)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.executor.info and not self.executor.wait_ready(self._stop):
                return
            job = self.queue.get(timeout=0.5)
            try:
                if job is not None:
                    self._execute(job)
                self._apply_flags()
            except Exception:
                log.exception("%s: loop error", self.executor.name)
        if self in self.pool._leaving:
            self.pool._end_actor(self)

    def retry(self, job: RunningJob, exc: Exception) -> bool:
        if not isinstance(exc, WorkerLost):
            return False
        log.warning("%s; starting a new worker", exc)
        self.executor.restart()
        if not self.pool.first_loss(job.item.prompt_id):
            exc.args = (f"{exc.args[0]} again, after it had been re-queued once; giving up",)
            return False
        with self._channel_lock:
            self.channel = None
        self.queue.task_done(job)
        self.queue.put(job.item)  # its own number: it runs next, before later prompts
        return True

    def _finish(self, job: RunningJob, record: Any, channel: JobChannel) -> None:
        self.completed += 1
        super()._finish(job, record, channel)

    def describe(self) -> dict[str, Any]:
        channel = self.channel
        state = "starting" if not self.executor.info else ("busy" if channel else "idle")
        return {
            "name": self.executor.name,
            "state": state,
            **self.executor.info,
            "prompt_id": channel and channel.prompt_id,
            "completed": self.completed,
        }


class WorkerPool:
    """Stands where the single `QueueWorker` stands in `ServerState` (`start`, `stop`, `announce_end`)."""

    def __init__(
        self,
        queue: PromptQueue,
        history: HistoryStore,
        hub: EventHub,
        *,
        spec: WorkerSpec,
        folders: dict,
        count: int,
        gpus: bool,
        previews_for: Callable[[dict], bool] = lambda extra_data: True,
        journal: QueueJournal | None = None,
    ) -> None:
        self.queue, self.history, self.hub, self.journal = queue, history, hub, journal
        self.spec, self.folders, self.gpus, self.previews_for = spec, folders, gpus, previews_for
        self._losses: set[str] = set()
        self._lock = threading.Lock()
        self._numbers = iter(range(1 << 30))
        self.slots: list[PoolSlot] = []
        self._started = False
        self._leaving: list[PoolSlot] = []  # removed workers finishing their prompt
        self.owns_ray = False  # set by `start_pool` when it started Ray: `stop` shuts it down
        for _ in range(count):
            self.add_worker()

    def _make_actor(self) -> Any:
        ray = ray_module()
        resources = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
        return ray.remote(max_concurrency=4, **resources)(PoolActor).remote(self.spec)

    def add_worker(self) -> PoolSlot:
        slot = PoolSlot(self, RemoteExecutor(self._make_actor, self.folders, f"worker {next(self._numbers)}"))
        with self._lock:
            self.slots.append(slot)
        if self._started:
            slot.start()
        return slot

    def remove_worker(self, name: str) -> bool:
        """Retire a worker after its current prompt; its actor is ended then."""
        with self._lock:
            slot = next((s for s in self.slots if s.executor.name == name), None)
            if slot is None:
                return False
            self.slots.remove(slot)
            self._leaving.append(slot)
        slot._stop.set()  # this slot only: the queue stays open for the others
        if not slot.executor.info:  # still waiting for a GPU/CPU: nothing runs on it
            self._end_actor(slot)
        return True

    def _end_actor(self, slot: PoolSlot) -> None:
        with contextlib.suppress(Exception):  # gone already
            ray_module().kill(slot.executor.actor, no_restart=True)

    def first_loss(self, prompt_id: str) -> bool:
        """True the first time `prompt_id` loses its worker, False after that."""
        with self._lock:
            first = prompt_id not in self._losses
            self._losses.add(prompt_id)
            return first

    @property
    def channel(self) -> JobChannel | None:
        return next((s.channel for s in list(self.slots) if s.channel is not None), None)

    def channel_for(self, client_id: str) -> JobChannel | None:
        for slot in list(self.slots):
            channel = slot.channel
            if channel is not None and channel.client_id == client_id:
                return channel
        return None

    def announce_end(self, item: QueueItem, events: list[tuple[str, dict]]) -> None:
        for slot in list(self.slots):
            with slot._channel_lock:
                if slot.channel is not None and slot.channel.client_id == item.client_id:
                    slot.channel.after_finish.extend(events)
                    return
        for event, data in events:
            self.hub.send_sync(event, data, item.client_id)

    def describe(self) -> list[dict[str, Any]]:
        return [slot.describe() for slot in list(self.slots)]

    def start(self) -> None:
        self._started = True
        for slot in list(self.slots):
            slot.start()

    def stop(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        every = list(self.slots) + self._leaving
        for slot in every:
            slot.stop(max(0.1, deadline - time.monotonic()))
        for slot in every:
            self._end_actor(slot)
        if self.owns_ray:
            ray_module().shutdown()


def _connect(config: ServerConfig) -> bool:
    """Join `config.ray_address`, or start a local Ray instance; False if Ray was running already."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    if config.ray_address is not None:
        ray.init(address=config.ray_address)
    elif config.engine.device == "cpu":
        ray.init(num_cpus=config.workers, include_dashboard=False)
    else:
        ray.init(include_dashboard=False)  # Ray counts this machine's GPUs
    return True


def start_pool(
    config: ServerConfig,
    queue: PromptQueue,
    history: HistoryStore,
    hub: EventHub,
    journal: QueueJournal,
) -> WorkerPool:
    """The pool `config` asks for: one worker per GPU of the cluster (or `workers` of them)."""
    owns_ray = _connect(config)
    cluster_gpus = int(ray_module().cluster_resources().get("GPU", 0))
    gpus = config.engine.device != "cpu" and cluster_gpus > 0
    count = config.workers or cluster_gpus or 1
    pool = WorkerPool(
        queue,
        history,
        hub,
        spec=WorkerSpec.create(config.models_dir, config.input_dir, config.engine),
        folders={"output": config.output_dir, "temp": config.temp_dir},
        count=count,
        gpus=gpus,
        previews_for=config.previews_for,
        journal=journal,
    )
    pool.owns_ray = owns_ray
    log.info(
        "worker pool: %d %s worker(s) on Ray %s", count, "GPU" if gpus else "CPU", ray_module().__version__
    )
    return pool
