"""One pool worker: a Ray actor holding one engine (one model copy on its GPU or CPU).

The actor runs prompts with the ordinary graph executor, but into a scratch folder of its own: the
files its output nodes write are read back, deleted, and returned as bytes with the result, so the
server writes every output itself (`zturbo.server.pool_outputs`) and `/view` and history stay
consistent even when the worker runs on another host. Events (progress, `executing`, previews) are
buffered here and fetched by the server with `poll`; the actor runs with several threads so `poll`
and `interrupt` are answered while a prompt runs. Only plain data crosses: dicts, lists, bytes.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from zturbo.runtime.settings import EngineSettings

# Kinds of folder an output node may write to; the server maps them onto its own folders.
OUTPUT_KINDS = ("output", "temp")


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its engine: the server's model and input folders and settings
    (`EngineSettings`' own fields as plain values: its derived placement holds torch objects)."""

    models_dir: Path
    input_dir: Path
    engine: dict[str, Any]

    @classmethod
    def create(cls, models_dir: Path, input_dir: Path, engine: EngineSettings) -> WorkerSpec:
        fields = {f.name: getattr(engine, f.name) for f in dataclasses.fields(engine) if f.init}
        return cls(models_dir, input_dir, fields)

    def settings(self) -> EngineSettings:
        return EngineSettings(**self.engine)


def collect_files(outputs: dict[str, dict[str, Any]], folders: dict[str, Path]) -> list[dict[str, Any]]:
    """Read (and delete) every file the result's ui entries name in `folders`: `{node, key, index,
    type, subfolder, filename, data}` each."""
    files = []
    for node, ui in outputs.items():
        for key, entries in ui.items():
            for index, entry in enumerate(entries if isinstance(entries, list) else []):
                kind = entry.get("type") if isinstance(entry, dict) else None
                if kind not in folders or "filename" not in entry:
                    continue
                path = folders[kind].joinpath(*[p for p in str(entry.get("subfolder", "")).split("/") if p])
                path = path / str(entry["filename"])
                files.append({"node": node, "key": key, "index": index, **entry, "data": path.read_bytes()})
                path.unlink(missing_ok=True)
    return files


class PoolActor:
    """Created by `ray.remote(max_concurrency=...)` in `zturbo.server.pool`; one per GPU (or CPU slot)."""

    def __init__(self, spec: WorkerSpec) -> None:
        from zturbo.server.app import default_executor
        from zturbo.server.config import ServerConfig

        self.scratch = Path(tempfile.mkdtemp(prefix="zturbo-worker-"))
        self.folders = {"output": self.scratch / "output", "temp": self.scratch / "temp"}
        for folder in self.folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        config = ServerConfig(
            models_dir=spec.models_dir,
            output_dir=self.folders["output"],
            input_dir=spec.input_dir,
            temp_dir=self.folders["temp"],
            data_dir=self.scratch / "state",
            engine=spec.settings(),
        )
        self.executor = default_executor(config)
        self.device = str(spec.engine["device"])
        self._events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._interrupt: threading.Event | None = None
        self._prompt_id: str | None = None

    def info(self) -> dict[str, Any]:
        """Where this worker runs: process id, host and device (answered once the engine is built)."""
        import torch

        device = "cpu"
        if torch.cuda.is_available() and self.device != "cpu":  # Ray gave this process one GPU: cuda:0
            device = f"cuda:0 {torch.cuda.get_device_name(0)}"
        return {"pid": os.getpid(), "host": platform.node(), "device": device}

    def _emit(self, event: str, data: dict) -> None:
        with self._lock:
            self._events.append((event, data))

    def _emit_preview(self, image: bytes) -> None:
        with self._lock:
            self._events.append(("preview", image))

    def poll(self) -> list[tuple[str, Any]]:
        """The events buffered since the last poll, oldest first."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def interrupt(self, prompt_id: str) -> bool:
        with self._lock:
            if self._interrupt is None or self._prompt_id != prompt_id:
                return False
            self._interrupt.set()
            return True

    def run(self, prompt: dict, prompt_id: str, outputs: list[str], extra_data: dict, previews: bool) -> dict:
        """Execute one prompt; the result as a dict (ExecutionResult's fields) plus `files`."""
        with self._lock:
            self._interrupt, self._prompt_id = threading.Event(), prompt_id
        try:
            result = self.executor.execute(
                prompt,
                prompt_id,
                outputs=outputs,
                extra_data=extra_data,
                emit=self._emit,
                emit_preview=self._emit_preview if previews else None,
                interrupt=self._interrupt,
            )
        finally:
            with self._lock:
                self._interrupt = self._prompt_id = None
        body = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(vars(result))
        body["files"] = collect_files(body.get("outputs") or {}, self.folders)
        return body

    def free(self, unload_models: bool) -> None:
        self.executor.free(unload_models=unload_models)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
