"""The node registry: class_type → node class, and the `/object_info` it implies.

Option lists that depend on files (model folders, the input folder) or on the engine (sampler names)
are computed from the bound `ExecutionContext` each time `object_info` is asked for, so a model copied
into the folder shows up on the next refresh, as in ComfyUI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from zturbo.nodes import (
    conditioning,
    controlnet,
    custom_sampler,
    image,
    image_tools,
    io,
    latent,
    latent_batch,
    loaders,
    lora,
    mask,
    primitives,
    sampling,
    upscale,
    utility,
)
from zturbo.nodes.base import Node
from zturbo.nodes.schema import NodeSchema

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext


_NodeClass = TypeVar("_NodeClass", bound="type[Node]")


class NodeRegistry:
    """Node classes by class_type. A node class has `schema: NodeSchema` and `execute(ctx, **inputs)`."""

    def __init__(self, context: ExecutionContext | None = None) -> None:
        self._nodes: dict[str, type[Node]] = {}
        self.context = context

    def bind(self, context: ExecutionContext) -> None:
        """Use `context` for request-time option lists (the executor binds its own if none is set)."""
        self.context = context

    def register(self, cls: _NodeClass) -> _NodeClass:
        """Add a node class (usable as a decorator); a second class with the same name is an error."""
        schema = getattr(cls, "schema", None)
        if not isinstance(schema, NodeSchema) or not callable(getattr(cls, "execute", None)):
            raise TypeError(f"{cls!r} is not a node class (needs a NodeSchema `schema` and `execute`)")
        if schema.name in self._nodes and self._nodes[schema.name] is not cls:
            raise ValueError(f"node type {schema.name!r} is already registered")
        self._nodes[schema.name] = cls
        return cls

    def get(self, class_type: str) -> type[Node] | None:
        return self._nodes.get(class_type)

    def schema(self, class_type: str) -> NodeSchema | None:
        cls = self._nodes.get(class_type)
        return cls.schema if cls is not None else None

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._nodes

    def names(self) -> list[str]:
        return list(self._nodes)

    def object_info(self, context: ExecutionContext | None = None) -> dict[str, Any]:
        """`GET /object_info`: every node's entry, keyed by class_type."""
        ctx = context if context is not None else self.context
        return {name: cls.schema.object_info(ctx) for name, cls in self._nodes.items()}

    def object_info_for(self, class_type: str, context: ExecutionContext | None = None) -> dict[str, Any]:
        """One node's entry (the value under its name in `/object_info`); KeyError if unknown."""
        cls = self._nodes[class_type]
        return cls.schema.object_info(context if context is not None else self.context)


def default_registry(context: ExecutionContext | None = None) -> NodeRegistry:
    """A new registry holding every built-in node."""
    registry = NodeRegistry(context)
    modules = (loaders, lora, controlnet, conditioning, latent, latent_batch, sampling, custom_sampler, image)
    for module in (*modules, image_tools, io, primitives, mask, upscale, utility):
        for cls in module.NODES:
            registry.register(cls)
    return registry
