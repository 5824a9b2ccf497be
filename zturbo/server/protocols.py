"""What the server needs from the graph package, as structural types.

The server only calls these methods, so tests can hand in small doubles and the real
`zturbo.graph.executor.PromptExecutor` fits without the server importing it at module level.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

Emit = Callable[[str, dict], None]
EmitPreview = Callable[[bytes], None]


class ValidationResultLike(Protocol):
    ok: bool
    error: Any
    node_errors: Any
    outputs: list[str]


class ExecutionResultLike(Protocol):
    status_str: str
    completed: bool
    outputs: dict
    messages: list
    error: Any
    interrupted: bool


class ExecutorLike(Protocol):
    def validate(self, prompt: dict, partial_targets: list[str] | None = None) -> ValidationResultLike: ...

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
    ) -> ExecutionResultLike: ...

    def free(self, unload_models: bool) -> None: ...


class RegistryLike(Protocol):
    def object_info(self) -> dict: ...

    def object_info_for(self, class_type: str) -> dict: ...
