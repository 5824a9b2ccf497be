"""What every node class shares: the output wrapper and access to the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from zturbo.errors import ZTurboError

if TYPE_CHECKING:
    from zturbo.nodes.context import NodeContext
    from zturbo.nodes.engine_api import EngineAPI
    from zturbo.nodes.schema import NodeSchema


class NodeOutput:
    """A node's result: one value per declared output, plus an optional `ui` dict
    (for example `{"images": [{"filename", "subfolder", "type"}]}`) that becomes the `executed` event
    and the history entry."""

    def __init__(self, *values: Any, ui: dict[str, Any] | None = None) -> None:
        self.values = tuple(values)
        self.ui = ui

    def __repr__(self) -> str:
        return f"NodeOutput({len(self.values)} values, ui={self.ui!r})"


class Node:
    """Base class for nodes. Subclasses set `schema` and implement `execute`.

    Optional class-level hooks, mirroring ComfyUI's IS_CHANGED and VALIDATE_INPUTS:
    - `is_changed(cls, ctx: ExecutionContext, **literal_inputs) -> Hashable`: part of the cache key,
      for nodes whose result depends on more than their inputs (a file's content). NaN means "always".
    - `validate_inputs(cls, ctx: ExecutionContext, **inputs) -> bool | str`: replaces the range and
      option-list checks for the inputs it names; a string is the reason for refusal.
    """

    schema: ClassVar[NodeSchema]

    # `*args: Any, **inputs: Any` lets each subclass declare its own named inputs (mypy accepts any override).
    def execute(self, ctx: NodeContext, *args: Any, **inputs: Any) -> tuple[Any, ...] | NodeOutput:
        raise NotImplementedError


class EngineMissingError(ZTurboError):
    """A model node ran without an engine (a configuration error, not a user error)."""


def require_engine(ctx: NodeContext) -> EngineAPI:
    """The engine, or a clear error: model nodes cannot run without one."""
    engine = ctx.engine
    if engine is None:
        raise EngineMissingError(f"node {ctx.node_id} needs the model engine, but none is configured")
    return engine
