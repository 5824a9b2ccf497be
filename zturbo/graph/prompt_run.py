"""Running one prompt: plan, run nodes in dependency order, emit ComfyUI's events, fill the cache.

A failing node ends its own prompt with `execution_error` (or `execution_interrupted`) and nothing
else: every exception is caught here and turned into an event, never raised to the caller.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zturbo.errors import Interrupted
from zturbo.graph.cache import CachedNode, GraphError, OutputCache, SignatureBuilder
from zturbo.graph.progress_state import NodeProgress
from zturbo.graph.prompt import DependencyCycle, coerce, dependency_order, is_link, normalize_prompt, unwrap
from zturbo.graph.validation import full_type_name
from zturbo.nodes.base import Node, NodeOutput
from zturbo.nodes.context import ExecutionContext, NodeContext
from zturbo.nodes.schema import NodeSchema

if TYPE_CHECKING:
    from PIL import Image

    from zturbo.nodes.registry import NodeRegistry

log = logging.getLogger(__name__)

Emit = Callable[[str, dict], None]
EmitPreview = Callable[[bytes], None]
PREVIEW_MAX_SIZE = 512


@dataclass
class ExecutionResult:
    """What a prompt produced, in the shape of a ComfyUI history entry's parts."""

    status_str: str
    completed: bool
    outputs: dict[str, dict[str, Any]]
    messages: list[list[Any]]
    error: dict[str, Any] | None = None
    interrupted: bool = False
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)


def error_report(
    prompt_id: str,
    exc: BaseException,
    *,
    node_id: str | None = None,
    node_type: str | None = None,
    executed: list[str] | None = None,
    inputs: dict[str, Any] | None = None,
    outputs: list[str] | None = None,
) -> dict[str, Any]:
    """ComfyUI's `execution_error` data for a prompt that failed at `node_id` (None: outside any node)."""
    return {
        "prompt_id": prompt_id,
        "node_id": node_id,
        "node_type": node_type,
        "executed": executed or [],
        "exception_message": str(exc),
        "exception_type": full_type_name(type(exc)),
        "traceback": traceback.format_tb(exc.__traceback__),
        "current_inputs": {name: [format_value(v)] for name, v in (inputs or {}).items()},
        "current_outputs": outputs or [],
    }


def format_value(value: Any) -> Any:
    """ComfyUI's `format_value` for error reports: JSON scalars as is, anything else as (short) text."""
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    text = str(value)
    return text if len(text) <= 2000 else text[:2000] + "…"


def preview_jpeg(image: Image.Image) -> bytes:
    """A preview frame as ComfyUI sends it: JPEG, at most 512 px a side."""
    image = image.convert("RGB")
    image.thumbnail((PREVIEW_MAX_SIZE, PREVIEW_MAX_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def split_result(result: Any, schema: NodeSchema) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """A node's return value as (outputs, ui); accepts NodeOutput, a tuple, or ComfyUI's result dict."""
    if isinstance(result, NodeOutput):
        values, ui = result.values, result.ui
    elif isinstance(result, dict) and ("ui" in result or "result" in result):
        values, ui = tuple(result.get("result") or ()), result.get("ui")
    elif isinstance(result, (tuple, list)):
        values, ui = tuple(result), None
    else:
        raise TypeError(
            f"{schema.name}.execute returned {type(result).__name__}, expected a tuple or NodeOutput"
        )
    if len(values) != len(schema.outputs):
        raise TypeError(
            f"{schema.name}.execute returned {len(values)} values for {len(schema.outputs)} outputs"
        )
    return values, ui


class PromptRun:
    """State of one `execute` call."""

    def __init__(
        self,
        registry: NodeRegistry,
        context: ExecutionContext,
        cache: OutputCache,
        prompt: dict[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any],
        emit: Emit,
        emit_preview: EmitPreview | None,
        interrupt: threading.Event | None,
    ) -> None:
        self.registry, self.context, self.cache = registry, context, cache
        self.original_prompt = prompt
        self.prompt = normalize_prompt(prompt)
        self.prompt_id = prompt_id
        self.extra_data = extra_data or {}
        self._emit, self._emit_preview, self.interrupt = emit, emit_preview, interrupt
        self.messages: list[list[Any]] = []
        self.results: dict[str, tuple[Any, ...]] = {}
        self.ui: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.cached_at_start: list[str] = []
        self.keys: dict[str, str] = {}
        self.signatures = SignatureBuilder(self.prompt, registry, context)
        self.error: dict[str, Any] | None = None
        self.was_interrupted = False
        self.planned: set[str] = set()  # nodes already placed in an execution order
        self.progress = NodeProgress(prompt_id, self.emit)

    # -- events -------------------------------------------------------------------------------
    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send an event; a failing listener (a client gone) must not fail the prompt."""
        try:
            self._emit(event, data)
        except Exception:
            log.exception("event listener failed on %s", event)

    def add_message(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Status events are also kept for the history entry, with a timestamp as ComfyUI adds."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.messages.append([event, data])
        self.emit(event, data)
        return data

    # -- main flow ----------------------------------------------------------------------------
    def run(self, outputs: list[str]) -> ExecutionResult:
        self.add_message("execution_start", {"prompt_id": self.prompt_id})
        try:
            self._prepare()
            order = self._plan([str(o) for o in outputs])
        except GraphError as exc:
            self._fail(exc.node_id, exc, {})
            order = []
        if self.error is None:
            for node_id in order:
                if not self._run_node(node_id):
                    break
            else:
                self.add_message("execution_success", {"prompt_id": self.prompt_id})
        return self._result()

    def _prepare(self) -> None:
        """Key every node, keep only this prompt's cache entries, announce what is cached."""
        self.keys = self.signatures.all_keys()
        self.cache.retain(set(self.keys.values()))
        self.cached_at_start = [n for n, k in self.keys.items() if self.cache.get(k) is not None]
        for node_id, key in self.keys.items():
            entry = self.cache.get(key)
            if entry is not None and entry.ui is not None:
                self.ui[node_id] = entry.ui
        self.add_message(
            "execution_cached", {"nodes": list(self.cached_at_start), "prompt_id": self.prompt_id}
        )

    def _plan(self, outputs: list[str]) -> list[str]:
        """Dependency order for the requested outputs; cached nodes end the walk upstream, and so do
        lazy inputs (their nodes run only when the node asks for them, see `_run_lazy`)."""
        order: list[str] = []
        for output in outputs:
            if output not in self.prompt:
                log.warning("prompt %s: output %s is not in the prompt; skipped", self.prompt_id, output)
                continue
            order += self._order([output])
        for node_id in order:
            if node_id not in self.keys:
                self.signatures.key(node_id)  # raises GraphError saying why it has no key
        return order

    def _order(self, roots: list[str]) -> list[str]:
        """The nodes `roots` need, not yet planned, in dependency order (iterative: chains of any
        length); cached nodes and lazy inputs end the walk upstream."""
        try:
            order = dependency_order(
                self.prompt, roots, stop=self._cached, skip=self.planned, sources=self._eager_sources
            )
        except DependencyCycle as cycle:
            raise GraphError(cycle.nodes[0], str(cycle)) from None
        self.planned.update(order)
        return order

    def _cached(self, node_id: str) -> bool:
        key = self.keys.get(node_id)
        return key is not None and self.cache.get(key) is not None

    def _eager_sources(self, node_id: str) -> list[str]:
        """The nodes `node_id` reads from, except through lazy inputs."""
        lazy = self._lazy_inputs(node_id)
        inputs = self.prompt[node_id].get("inputs", {})
        return [str(v[0]) for n, v in inputs.items() if is_link(v) and len(v) == 2 and n not in lazy]

    def _lazy_inputs(self, node_id: str) -> set[str]:
        cls = self.registry.get(self.prompt[node_id]["class_type"])
        schema = getattr(cls, "schema", None)
        return {spec.name for spec in schema.inputs if spec.lazy} if schema is not None else set()

    def _run_lazy(self, node_id: str, cls: type[Node], inputs: dict[str, Any]) -> bool:
        """ComfyUI's lazy inputs: ask the node which lazy inputs it needs (`check_lazy_status`, given
        what is computed so far, None for the rest), run their nodes, and ask again until it needs
        nothing more. False if one of those nodes failed (the prompt has ended)."""
        lazy = self._lazy_inputs(node_id)
        hook = getattr(cls, "check_lazy_status", None)
        raw = self.prompt[node_id].get("inputs", {})
        while hook is not None:
            needed = [
                n for n in hook(**{**dict.fromkeys(lazy), **inputs}) or () if n in lazy and n not in inputs
            ]
            links = [raw[n] for n in needed if is_link(raw.get(n))]
            if not links:
                return True
            for source, _slot in links:
                for upstream in self._order([str(source)]):
                    if upstream not in self.results and not self._run_node(upstream):
                        return False
            inputs.update(self._gather_inputs(node_id, cls.schema))
        return True

    # -- one node -----------------------------------------------------------------------------
    def _run_node(self, node_id: str) -> bool:
        entry = self.cache.get(self.keys[node_id])
        if entry is not None:
            self.results[node_id] = entry.outputs
            if entry.ui is not None:
                self._announce_ui(node_id, entry.ui)
            return True
        inputs: dict[str, Any] = {}
        try:
            self._check_interrupt()
            cls = self.registry.get(self.prompt[node_id]["class_type"])
            if cls is None:
                raise KeyError(f"node type {self.prompt[node_id]['class_type']!r} is not registered")
            inputs = self._gather_inputs(node_id, cls.schema)
            if not self._run_lazy(node_id, cls, inputs):
                return False
            self.emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id})
            self.progress.start(node_id)
            values, ui = split_result(cls().execute(self._node_context(node_id), **inputs), cls.schema)
        except Interrupted:
            self._interrupted(node_id)
            return False
        except Exception as exc:
            if node_id in self.progress.nodes:
                self.progress.fail(node_id)
            self._fail(node_id, exc, inputs)
            return False
        self.progress.finish(node_id)
        self.cache.put(self.keys[node_id], CachedNode(values, ui))
        self.results[node_id] = values
        self.executed.append(node_id)
        if ui is not None:
            self._announce_ui(node_id, ui)
        return True

    def _announce_ui(self, node_id: str, ui: dict[str, Any]) -> None:
        self.ui[node_id] = ui
        data = {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id}
        self.emit("executed", data)

    def _gather_inputs(self, node_id: str, schema: NodeSchema) -> dict[str, Any]:
        """Keyword arguments for `execute`: upstream outputs for links, coerced literals otherwise;
        a dynamic combo's `name.child` values are nested into one dict under `name`."""
        raw = self.prompt[node_id].get("inputs", {})
        kwargs: dict[str, Any] = {}
        for name, spec in schema.expand_inputs({k: unwrap(v) for k, v in raw.items()}):
            if name not in raw:
                continue
            value = raw[name]
            if is_link(value) and value[0] not in self.results:
                continue  # a lazy input not (yet) asked for
            value = self.results[value[0]][value[1]] if is_link(value) else coerce(spec, value)
            parent, _, child = name.partition(".")
            if child:
                kwargs.setdefault(parent, {})[child] = value
            elif spec.is_dynamic:
                kwargs[name] = {name: value}
            else:
                kwargs[name] = value
        return kwargs

    def _node_context(self, node_id: str) -> NodeContext:
        def on_progress(value: int, maximum: int, preview: Image.Image | None) -> None:
            data = {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id}
            self.emit("progress", data)
            self.progress.update(node_id, value, maximum)
            if preview is not None and self._emit_preview is not None:
                try:
                    self._emit_preview(preview_jpeg(preview))
                except Exception:
                    log.exception("preview listener failed")

        return NodeContext(
            execution=self.context,
            node_id=node_id,
            prompt_id=self.prompt_id,
            prompt=self.original_prompt,
            extra_pnginfo=self.extra_data.get("extra_pnginfo"),
            on_progress=on_progress,
            interrupt=self.interrupt,
            wants_preview=self._emit_preview is not None,
            on_message=self.add_message,
            on_event=self.emit,
        )

    def _check_interrupt(self) -> None:
        if self.interrupt is not None and self.interrupt.is_set():
            raise Interrupted("interrupted by the user")

    # -- failures -----------------------------------------------------------------------------
    def _node_type(self, node_id: str) -> Any:
        node = self.prompt.get(node_id)
        return node.get("class_type") if isinstance(node, dict) else None

    def _interrupted(self, node_id: str) -> None:
        self.was_interrupted = True
        data = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": self._node_type(node_id),
            "executed": list(self.executed),
        }
        self.error = self.add_message("execution_interrupted", data)

    def _fail(self, node_id: str, exc: BaseException, inputs: dict[str, Any]) -> None:
        log.error("prompt %s: node %s failed: %s", self.prompt_id, node_id, exc, exc_info=exc)
        data = error_report(
            self.prompt_id,
            exc,
            node_id=node_id,
            node_type=self._node_type(node_id),
            executed=list(self.executed),
            inputs=inputs,
            outputs=list(dict.fromkeys([*self.cached_at_start, *self.executed])),
        )
        self.error = self.add_message("execution_error", data)

    def crash(self, exc: BaseException) -> ExecutionResult:
        """Report an executor bug as this prompt's error."""
        self._fail("", exc, {})
        return self._result()

    def _result(self) -> ExecutionResult:
        ok = self.error is None
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in self.ui}
        return ExecutionResult(
            status_str="success" if ok else "error",
            completed=ok,
            outputs=dict(self.ui),
            messages=self.messages,
            error=self.error,
            interrupted=self.was_interrupted,
            meta=meta,
        )
