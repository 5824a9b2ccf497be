"""What nodes see while running: folders, the engine, and their own progress and interrupt hooks.

`ExecutionContext` lives as long as the server (or one `zturbo run`); `NodeContext` is made for one
node of one prompt, so a node never needs global state to report progress or find its files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zturbo.checkpoints.layout import folder_dirs, model_names
from zturbo.errors import Interrupted, MissingModelError
from zturbo.paths import relative_parts, safe_join, split_annotation
from zturbo.progress import ProgressFn

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ExecutionContext:
    """Folders, device choices and the engine shared by every prompt."""

    models_dir: Path
    output_dir: Path
    input_dir: Path
    temp_dir: Path
    engine: Any = None

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)
        self.output_dir = Path(self.output_dir)
        self.input_dir = Path(self.input_dir)
        self.temp_dir = Path(self.temp_dir)

    def model_dirs(self, folder: str) -> list[Path]:
        """The directories that hold models of `folder` (aliases included)."""
        return folder_dirs(self.models_dir, folder)

    def list_models(self, folder: str) -> list[str]:
        """Model files under `models_dir/<folder>` (recursive, aliases merged), as relative posix names."""
        return model_names(self.models_dir, folder)

    def resolve_model(self, folder: str, name: str) -> Path:
        """The file a loader's `name` refers to. Symlinked model files are fine (people share
        model stores); names with `..` or absolute paths are not."""
        parts = relative_parts(name, what=f"model name for {folder}")
        for base in self.model_dirs(folder):
            candidate = base.joinpath(*parts)
            if candidate.is_file():
                return candidate
        searched = ", ".join(str(d) for d in self.model_dirs(folder))
        raise MissingModelError(f"model file {name!r} not found in {searched}")

    def folder(self, kind: str) -> Path:
        """The input, output or temp folder."""
        folders = {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}
        if kind not in folders:
            raise ValueError(f"unknown folder kind {kind!r}")
        return folders[kind]

    def list_input_images(self) -> list[str]:
        """Image files directly in the input folder, sorted: LoadImage's choices."""
        if not self.input_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.input_dir.iterdir()
            if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS
        )

    def resolve_annotated(self, name: str, default: str = "input") -> Path:
        """A LoadImage-style name (`sub/a.png`, `a.png [output]`) inside its folder, never outside."""
        plain, kind = split_annotation(name)
        return safe_join(self.folder(kind or default), plain, what=f"file name {name!r}")


@dataclass
class NodeContext:
    """What `Node.execute` receives: the shared context plus this node's identity and hooks."""

    execution: ExecutionContext
    node_id: str
    prompt_id: str
    prompt: dict[str, Any] = field(default_factory=dict)
    extra_pnginfo: dict[str, Any] | None = None
    on_progress: ProgressFn | None = None
    interrupt: threading.Event | None = None
    wants_preview: bool = False  # someone listens for preview images: worth computing them
    on_message: Callable[[str, dict[str, Any]], Any] | None = None  # into the history's status.messages + WS
    on_event: Callable[[str, dict[str, Any]], Any] | None = None  # to the client only (not kept in history)

    def message(self, event: str, data: dict[str, Any]) -> None:
        """A status message of this prompt: kept in its history entry and sent to its client."""
        if self.on_message is not None:
            self.on_message(event, {"prompt_id": self.prompt_id, "node": self.node_id, **data})

    def event(self, event: str, data: dict[str, Any]) -> None:
        """A passing event for this prompt's client (streamed text, say), not kept in its history."""
        if self.on_event is not None:
            self.on_event(event, {"prompt_id": self.prompt_id, "node": self.node_id, **data})

    @property
    def engine(self) -> Any:
        return self.execution.engine

    @property
    def models_dir(self) -> Path:
        return self.execution.models_dir

    @property
    def output_dir(self) -> Path:
        return self.execution.output_dir

    @property
    def input_dir(self) -> Path:
        return self.execution.input_dir

    @property
    def temp_dir(self) -> Path:
        return self.execution.temp_dir

    def check_interrupt(self) -> None:
        """Raise `Interrupted` if the user asked to stop; long loops call this between steps."""
        if self.interrupt is not None and self.interrupt.is_set():
            raise Interrupted("interrupted by the user")

    def progress(self, value: int, max: int, preview: Image.Image | None = None) -> None:  # noqa: A002
        """Report progress (and optionally a preview image); doubles as an interrupt point."""
        self.check_interrupt()
        if self.on_progress is not None:
            self.on_progress(value, max, preview)
