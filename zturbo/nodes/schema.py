"""Declarative node schemas.

One description per node drives everything ComfyUI derives from a node class: the `/object_info`
entry the frontend draws widgets from, prompt validation (types, ranges, option lists), the mapping
of a UI workflow's positional `widgets_values` onto input names, and the keyword arguments `execute`
receives. Keeping all four on one dataclass is what stops them drifting apart.

ComfyUI has two declaration styles whose JSON differs slightly (classic `INPUT_TYPES` tuples versus
the newer `io.Schema`); `NodeSchema.style` reproduces the one the real node uses, so the frontend sees
exactly what it would see from ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
# ComfyUI's MatchType: a socket of any type, all of one template's sockets the same (the switch node's).
MATCH_TYPE = "COMFY_MATCHTYPE_V3"
# The frontend adds a control_after_generate widget to INTs with these names even without the flag.
SEED_NAMES = ("seed", "noise_seed")
# Frontend cap for "randomize" (2**50), so random seeds survive a round trip through JS numbers.
RANDOM_SEED_CAP = 1125899906842624

Style = Literal["v1", "v3"]
OptionsSource = Sequence[Any] | Callable[["ExecutionContext | None"], Sequence[Any]]

PROMPT = ("prompt", "PROMPT")
EXTRA_PNGINFO = ("extra_pnginfo", "EXTRA_PNGINFO")
UNIQUE_ID = ("unique_id", "UNIQUE_ID")


@dataclass(frozen=True)
class DynamicOption:
    """One choice of a dynamic combo and the extra inputs it brings (ComfyUI `DynamicCombo.Option`)."""

    key: str
    inputs: tuple[InputSpec, ...] = ()


@dataclass(frozen=True)
class InputSpec:
    """One input socket or widget; `None` fields are left out of the JSON, as ComfyUI prunes them."""

    name: str
    type: str
    optional: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | None = None
    tooltip: str | None = None
    multiline: bool | None = None
    dynamic_prompts: bool | None = None
    options: OptionsSource | None = None
    control_after_generate: bool | str | None = None
    image_upload: bool = False
    advanced: bool | None = None
    force_input: bool | None = None
    display: str | None = None
    choices: tuple[DynamicOption, ...] = ()
    lazy: bool | None = None  # evaluated only if the node asks for it (`Node.check_lazy_status`)
    socketless: bool | None = None  # a UI-only widget (no socket, no value sent): never required
    template: tuple[tuple[str, str], ...] | None = None  # MatchType template (template_id, allowed_types)

    @property
    def is_combo(self) -> bool:
        return self.type == "COMBO"

    @property
    def is_dynamic(self) -> bool:
        return self.type == DYNAMIC_COMBO

    @property
    def is_widget(self) -> bool:
        """Whether the frontend draws a widget for it (and so stores a value in `widgets_values`)."""
        return (self.type in WIDGET_TYPES or self.is_dynamic) and not self.force_input

    def has_control(self) -> bool:
        """Whether the frontend follows this widget with a control_after_generate widget."""
        if self.type == "INT":
            if self.control_after_generate is not None:
                return bool(self.control_after_generate)
            return self.name in SEED_NAMES
        return self.is_combo and bool(self.control_after_generate)

    def ui_extra_values(self) -> int:
        """UI-only values stored right after this widget's own value in `widgets_values`."""
        extra = 0
        if self.has_control():
            extra += 2 if self.is_combo else 1  # combos also get a "control_filter_list" widget
        if self.image_upload:
            extra += 1  # the "upload" button widget
        return extra

    def option_values(self, ctx: ExecutionContext | None) -> list[Any]:
        """Combo choices, computed now when they depend on files on disk or the engine."""
        if self.is_dynamic:
            return [c.key for c in self.choices]
        if self.options is None:
            return []
        values = self.options(ctx) if callable(self.options) else self.options
        return list(values)

    def choice(self, key: Any) -> DynamicOption | None:
        return next((c for c in self.choices if c.key == key), None)

    def _options_dict(self, style: Style) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "default": self.default,
            "min": self.min,
            "max": self.max,
            "step": self.step,
            "round": self.round,
            "multiline": self.multiline,
            "dynamicPrompts": self.dynamic_prompts,
            "control_after_generate": self.control_after_generate,
            "display": self.display,
            "lazy": self.lazy,
            "socketless": self.socketless,
            "template": dict(self.template) if self.template is not None else None,
            "forceInput": self.force_input,
            "advanced": self.advanced,
            "tooltip": self.tooltip,
        }
        if self.image_upload:
            raw["image_upload"] = True
        if style == "v3" and self.is_combo:
            raw["multiselect"] = False
        return {k: v for k, v in raw.items() if v is not None}

    def spec(self, style: Style, ctx: ExecutionContext | None) -> list[Any]:
        """This input's `/object_info` entry: `[TYPE, opts]`, or `[[options], opts]` for classic combos."""
        opts = self._options_dict(style)
        if self.is_dynamic:
            opts["options"] = [
                {"key": c.key, "inputs": _inputs_dict(c.inputs, "v3", ctx)} for c in self.choices
            ]
            return [DYNAMIC_COMBO, opts]
        if self.is_combo and style == "v1":
            values = self.option_values(ctx)
            return [values, opts] if opts else [values]
        if self.is_combo:
            opts["options"] = self.option_values(ctx)
        if style == "v1" and not opts:
            return [self.type]
        return [self.type, opts]


@dataclass(frozen=True)
class OutputSpec:
    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None


@dataclass(frozen=True)
class NodeSchema:
    """Everything ComfyUI knows about a node class, as data."""

    name: str
    display_name: str | None = None
    category: str = "sd"
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    description: str = ""
    output_node: bool = False
    hidden: tuple[tuple[str, str], ...] = ()
    style: Style = "v1"
    python_module: str = "nodes"

    def get_input(self, name: str) -> InputSpec | None:
        return next((i for i in self.inputs if i.name == name), None)

    def ordered_inputs(self) -> list[InputSpec]:
        """Required then optional, which is the order the frontend creates widgets in."""
        return [i for i in self.inputs if not i.optional] + [i for i in self.inputs if i.optional]

    def widget_inputs(self) -> list[InputSpec]:
        return [i for i in self.ordered_inputs() if i.is_widget]

    def expand_inputs(self, values: Mapping[str, Any]) -> list[tuple[str, InputSpec]]:
        """Inputs in effect for these values: dynamic combos add their chosen option's inputs,
        named `<combo>.<input>` as ComfyUI's API format flattens them."""
        out: list[tuple[str, InputSpec]] = []
        for spec in self.ordered_inputs():
            out.append((spec.name, spec))
            if spec.is_dynamic:
                chosen = spec.choice(values.get(spec.name))
                for child in chosen.inputs if chosen else ():
                    out.append((f"{spec.name}.{child.name}", child))
        return out

    def has_hidden(self, kind: str) -> bool:
        return any(value == kind for _, value in self.hidden)

    def object_info(self, ctx: ExecutionContext | None = None) -> dict[str, Any]:
        """The node's `/object_info` entry in ComfyUI's JSON shape (including `input_order`)."""
        inputs = _inputs_dict(self.inputs, self.style, ctx)
        if self.hidden:
            inputs["hidden"] = {
                name: (value if self.style == "v1" else [value]) for name, value in self.hidden
            }
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": {section: list(entries) for section, entries in inputs.items()},
            "is_input_list": False,
            "output": [o.type for o in self.outputs],
            "output_is_list": [o.is_list for o in self.outputs],
            "output_name": [o.name or o.type for o in self.outputs],
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
            "deprecated": False,
            "experimental": False,
        }
        if any(o.tooltip for o in self.outputs):
            info["output_tooltips"] = [o.tooltip for o in self.outputs]
        return info


def _inputs_dict(
    inputs: Sequence[InputSpec], style: Style, ctx: ExecutionContext | None
) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {"required": {}}
    for spec in inputs:
        section = "optional" if spec.optional else "required"
        result.setdefault(section, {})[spec.name] = spec.spec(style, ctx)
    return result


def Int(name: str, **kw: Any) -> InputSpec:  # noqa: N802 - builder names mirror ComfyUI's io.Int
    return InputSpec(name, "INT", **kw)


def Float(name: str, **kw: Any) -> InputSpec:  # noqa: N802
    return InputSpec(name, "FLOAT", **kw)


def String(name: str, **kw: Any) -> InputSpec:  # noqa: N802
    return InputSpec(name, "STRING", **kw)


def Boolean(name: str, **kw: Any) -> InputSpec:  # noqa: N802
    return InputSpec(name, "BOOLEAN", **kw)


def Combo(name: str, options: OptionsSource, **kw: Any) -> InputSpec:  # noqa: N802
    return InputSpec(name, "COMBO", options=options, **kw)


def Link(name: str, type_: str, **kw: Any) -> InputSpec:  # noqa: N802
    """A socket fed by another node's output (MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, MASK)."""
    return InputSpec(name, type_, **kw)


def DynamicCombo(name: str, choices: Sequence[DynamicOption], **kw: Any) -> InputSpec:  # noqa: N802
    return InputSpec(name, DYNAMIC_COMBO, choices=tuple(choices), **kw)


def Output(type_: str, name: str | None = None, **kw: Any) -> OutputSpec:  # noqa: N802
    return OutputSpec(type_, name, **kw)
