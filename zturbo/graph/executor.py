"""`PromptExecutor`: validates and runs API-format prompts, one at a time, keeping outputs cached.

The server owns the queue, the history and the WebSocket; this class owns everything between
"here is a prompt" and "here are its events and outputs". It is used from one worker thread; a lock
still makes concurrent calls (a CLI run next to `free`) safe.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from zturbo.graph.cache import OutputCache
from zturbo.graph.prompt_run import Emit, EmitPreview, ExecutionResult, PromptRun, error_report, format_value
from zturbo.graph.validation import ValidationResult, validate_prompt

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext
    from zturbo.nodes.registry import NodeRegistry

log = logging.getLogger(__name__)


class PromptExecutor:
    def __init__(self, registry: NodeRegistry, context: ExecutionContext) -> None:
        self.registry = registry
        self.context = context
        self.cache = OutputCache()
        self._lock = threading.Lock()
        if registry.context is None:
            # /object_info's model and file lists come from the registry: let it see our folders.
            registry.bind(context)

    def validate(self, prompt: dict[str, Any], partial_targets: list[str] | None = None) -> ValidationResult:
        """ComfyUI's validate_prompt: `{"error", "node_errors"}` shapes and the outputs to run."""
        return validate_prompt(prompt, self.registry, self.context, partial_targets)

    def execute(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        *,
        outputs: list[str],
        extra_data: dict[str, Any],
        emit: Emit,
        emit_preview: EmitPreview | None = None,
        interrupt: threading.Event | None = None,
    ) -> ExecutionResult:
        """Run the `outputs` nodes of an already validated prompt, emitting ComfyUI events.

        Emits execution_start, execution_cached, then per node executing / progress / executed, then
        execution_success, execution_error or execution_interrupted. ComfyUI's end-of-prompt signal
        (`executing` with node None) is the caller's to send, once it has stored the result (the
        server's worker sends it after saving history). A node failure ends this prompt only; nothing
        is raised.
        """
        with self._lock:
            run = PromptRun(
                self.registry,
                self.context,
                self.cache,
                prompt,
                prompt_id,
                extra_data,
                emit,
                emit_preview,
                interrupt,
            )
            try:
                return run.run(outputs)
            except Exception as exc:  # a bug here must not take the server's worker down
                log.exception("executor failed on prompt %s", prompt_id)
                return run.crash(exc)

    def free(self, unload_models: bool) -> None:
        """Drop cached outputs (and with them the loaded models); ask the engine to release memory
        if it offers `free(unload_models)`."""
        with self._lock:
            self.cache.clear()
            release = getattr(self.context.engine, "free", None)
            if callable(release):
                release(unload_models)


__all__ = ["ExecutionResult", "PromptExecutor", "ValidationResult", "error_report", "format_value"]
