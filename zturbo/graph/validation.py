"""Prompt validation with ComfyUI's error types and JSON shapes (`execution.validate_prompt`).

Clients (the ComfyUI frontend included) read these errors field by field to highlight nodes and
inputs, so the shapes, types and messages follow ComfyUI's; only `details` may say more.
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zturbo.graph.missing import MissingType, missing_message, missing_types
from zturbo.graph.prompt import (
    DependencyCycle,
    coerce,
    dependency_order,
    is_link,
    link_type,
    normalize_prompt,
    types_match,
    unwrap,
)
from zturbo.nodes.schema import InputSpec, NodeSchema

if TYPE_CHECKING:
    from zturbo.nodes.context import ExecutionContext
    from zturbo.nodes.registry import NodeRegistry


CYCLE = "dependency_cycle"


@dataclass
class ValidationResult:
    """`ok` False means HTTP 400 with `{"error": error, "node_errors": node_errors}`.

    `node_errors` can be non-empty even when `ok`: outputs that failed are dropped, the rest run."""

    ok: bool
    error: dict[str, Any] | None
    node_errors: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


def prompt_error(
    type_: str, message: str, details: str = "", extra_info: dict | None = None
) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}


def missing_node_error(missing: list[MissingType]) -> dict[str, Any]:
    """ComfyUI's `missing_node_type` error, naming every missing type at once: `extra_info` keeps
    ComfyUI's fields for the first node (clients read them) and adds `missing_node_types`."""
    first = missing[0]
    ids = [node_id for m in missing for node_id in m.node_ids]
    extra = {
        "node_id": first.node_ids[0],
        "class_type": first.class_type,
        "node_title": first.titles[0],
        "missing_node_types": [m.info() for m in missing],
    }
    details = ", ".join(f"Node ID '#{node_id}'" for node_id in ids)
    return prompt_error("missing_node_type", missing_message(missing), details, extra)


def full_type_name(cls: type) -> str:
    """`module.Qualname` (builtins without module), as ComfyUI reports exception types."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _exception_info(exc: BaseException) -> dict[str, Any]:
    return {"exception_type": full_type_name(type(exc)), "traceback": traceback.format_tb(exc.__traceback__)}


def custom_validated(cls: type) -> list[str]:
    """Inputs a node's `validate_inputs` hook checks itself (ComfyUI's VALIDATE_INPUTS argument names)."""
    hook = getattr(cls, "validate_inputs", None)
    if hook is None:
        return []
    return [p for p in inspect.signature(hook).parameters if p not in ("ctx", "cls", "self")]


class PromptValidator:
    """Validates one prompt; node results are memoised so shared ancestors are checked once.

    Each output's ancestors are validated in dependency order, sources first, so the check of a link
    always finds its source done: no recursion, whatever the chain's length; a cycle is reported on
    its nodes (`dependency_cycle`) and fails only the outputs that depend on it.
    """

    def __init__(
        self, prompt: dict[str, Any], registry: NodeRegistry, context: ExecutionContext | None
    ) -> None:
        self.prompt = normalize_prompt(prompt)
        self.registry = registry
        self.context = context
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def run(self, partial_targets: list[str] | None = None) -> ValidationResult:
        outputs, error = self._collect_outputs(partial_targets)
        if error is not None:
            return ValidationResult(False, error)
        good: list[str] = []
        failed: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        for output in outputs:
            try:
                self._validate_ancestors(output)
                valid, reasons = self.validate_node(output)
            except Exception as exc:  # a bug or a malformed graph: report it, never crash the caller
                valid = False
                reasons = [
                    prompt_error(
                        "exception_during_validation",
                        "Exception when validating node",
                        str(exc),
                        _exception_info(exc),
                    )
                ]
                self.validated[output] = (False, reasons)
            if valid:
                good.append(output)
                continue
            failed.append((output, reasons))
            self._collect_node_errors(output, node_errors)
        if not good:
            # As in ComfyUI, the outputs' own reasons; and a cycle, which ComfyUI would not survive,
            # however far upstream (the output it breaks has no reason of its own).
            lines = [f"{e['message']}: {e['details']}" for _, errs in failed for e in errs]
            for entry in node_errors.values():
                lines += [f"{e['message']}: {e['details']}" for e in entry["errors"] if e["type"] == CYCLE]
            details = "\n".join(dict.fromkeys(lines))
            error = prompt_error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
            )
            return ValidationResult(False, error, node_errors, [])
        return ValidationResult(True, None, node_errors, good)

    def _validate_ancestors(self, output: str) -> None:
        """Validate what `output` depends on, sources first (see the class docstring)."""
        try:
            order = dependency_order(self.prompt, [output], skip=set(self.validated))
        except DependencyCycle as cycle:
            reason = prompt_error(CYCLE, "Dependency cycle detected", str(cycle), {"nodes": cycle.nodes[:-1]})
            for node_id in cycle.nodes:
                self.validated[node_id] = (False, [reason])
            if output not in cycle.nodes:
                self.validated[output] = (False, [])
            return
        for node_id in order[:-1]:
            # A node whose own check raises is left unmemoised: its consumer's link check reports it.
            with contextlib.suppress(Exception):
                self.validate_node(node_id)

    def _collect_outputs(self, partial_targets: list[str] | None) -> tuple[list[str], dict | None]:
        targets = {str(t) for t in partial_targets} if partial_targets is not None else None
        for node_id, node in self.prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                message = "Cannot execute because a node is missing the class_type property."
                return [], prompt_error("invalid_prompt", message, f"Node ID '#{node_id}'")
        missing = missing_types(self.prompt, self.registry)
        if missing:
            return [], missing_node_error(missing)
        outputs: list[str] = []
        for node_id, node in self.prompt.items():
            schema = self.registry.schema(node["class_type"])
            if schema is not None and schema.output_node and (targets is None or node_id in targets):
                outputs.append(node_id)
        if not outputs:
            return [], prompt_error("prompt_no_outputs", "Prompt has no outputs")
        return outputs, None

    def _collect_node_errors(self, output: str, node_errors: dict[str, Any]) -> None:
        # Nodes downstream of a broken node are invalid without errors of their own: not reported.
        for node_id, (valid, reasons) in self.validated.items():
            if valid or not reasons:
                continue
            if node_id not in node_errors:
                class_type = self.prompt[node_id]["class_type"]
                node_errors[node_id] = {"errors": reasons, "dependent_outputs": [], "class_type": class_type}
            node_errors[node_id]["dependent_outputs"].append(output)

    def validate_node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in self.validated:
            return self.validated[node_id]
        node = self.prompt[node_id]
        cls = self.registry.get(node["class_type"])
        assert cls is not None  # unknown node types are reported before any node is validated
        schema: NodeSchema = cls.schema
        inputs = node.get("inputs") or {}
        custom = custom_validated(cls)
        errors: list[dict[str, Any]] = []
        valid = True
        for name, spec in schema.expand_inputs({k: unwrap(v) for k, v in inputs.items()}):
            if name not in inputs:
                if not spec.optional and not spec.socketless:
                    errors.append(_input_error("required_input_missing", "Required input is missing", name))
                continue
            value = inputs[name]
            if is_link(value):
                error, upstream_ok = self._check_link(name, spec, schema, value)
            else:
                error, upstream_ok = self._check_literal(name, spec, schema, value, name in custom), True
            valid = valid and upstream_ok
            if error is not None:
                errors.append(error)
        errors += self._custom_validation(cls, custom, inputs)
        result = (not errors and valid, errors)
        self.validated[node_id] = result
        return result

    def _config(self, spec: InputSpec, schema: NodeSchema) -> list[Any]:
        """The input's `/object_info` spec, reported as `input_config` (built only for errors, since
        combo specs list model folders)."""
        return spec.spec(schema.style, self.context)

    def _check_link(
        self, name: str, spec: InputSpec, schema: NodeSchema, value: list
    ) -> tuple[dict[str, Any] | None, bool]:
        if len(value) != 2:
            message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
            return _input_error(
                "bad_linked_input",
                message,
                name,
                input_config=self._config(spec, schema),
                received_value=value,
            ), True
        source_id, slot = value
        source = self.prompt.get(source_id)
        if source is None:
            raise LookupError(f"input '{name}' is linked to node '{source_id}', which is not in the prompt")
        source_schema = self.registry.schema(source["class_type"])
        if source_schema is None or not 0 <= slot < len(source_schema.outputs):
            raise LookupError(
                f"input '{name}' is linked to output {slot} of node '{source_id}', which it lacks"
            )
        received = source_schema.outputs[slot].type
        expected = link_type(spec)
        if not types_match(received, expected):
            details = f"{name}, received_type({received}) mismatch input_type({expected})"
            extra = {
                "input_config": self._config(spec, schema),
                "received_type": received,
                "linked_node": value,
            }
            return _input_error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                name,
                details=details,
                **extra,
            ), True
        try:
            upstream_ok, _ = self.validate_node(source_id)
        except Exception as exc:
            extra = {
                "input_name": name,
                "input_config": self._config(spec, schema),
                "exception_message": str(exc),
                **_exception_info(exc),
                "linked_node": value,
            }
            reason = prompt_error(
                "exception_during_inner_validation", "Exception when validating inner node", str(exc), extra
            )
            self.validated[source_id] = (False, [reason])
            return None, False
        return None, upstream_ok

    def _check_literal(
        self, name: str, spec: InputSpec, schema: NodeSchema, value: Any, custom: bool
    ) -> dict[str, Any] | None:
        try:
            value = coerce(spec, value)
        except Exception as exc:
            return _input_error(
                "invalid_input_type",
                f"Failed to convert an input value to a {spec.type} value",
                name,
                details=f"{name}, {value}, {exc}",
                input_config=self._config(spec, schema),
                received_value=value,
                exception_message=str(exc),
            )
        if custom:
            return None
        if spec.min is not None and value < spec.min:
            return _input_error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {spec.min}",
                name,
                input_config=self._config(spec, schema),
                received_value=value,
            )
        if spec.max is not None and value > spec.max:
            return _input_error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {spec.max}",
                name,
                input_config=self._config(spec, schema),
                received_value=value,
            )
        if spec.is_combo or spec.is_dynamic:
            return self._check_option(name, spec, schema, value)
        return None

    def _check_option(
        self, name: str, spec: InputSpec, schema: NodeSchema, value: Any
    ) -> dict[str, Any] | None:
        options = spec.option_values(self.context)
        if value in options:
            return None
        # Like ComfyUI, don't echo long lists (model folders can hold hundreds of files).
        if len(options) > 20:
            listed, config = f"(list of length {len(options)})", None
        else:
            listed, config = str(options), self._config(spec, schema)
        return _input_error(
            "value_not_in_list",
            "Value not in list",
            name,
            details=f"{name}: '{value}' not in {listed}",
            input_config=config,
            received_value=value,
        )

    def _custom_validation(
        self, cls: type, custom: list[str], inputs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if not custom:
            return []
        args = {n: (None if is_link(inputs.get(n)) else unwrap(inputs.get(n))) for n in custom if n in inputs}
        outcome = cls.validate_inputs(self.context, **args)  # type: ignore[attr-defined]
        if outcome is True:
            return []
        suffix = "" if outcome is False else f" - {outcome}"
        return [
            _input_error(
                "custom_validation_failed",
                "Custom validation failed for node",
                n,
                details=f"{n}{suffix}",
                include_name_only=True,
            )
            for n in args
        ]


def _input_error(
    type_: str,
    message: str,
    name: str,
    *,
    details: str | None = None,
    include_name_only: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """An input-level error: `extra_info` always names the input, then adds whatever ComfyUI adds."""
    extra_info: dict[str, Any] = {"input_name": name}
    if not include_name_only:
        extra_info.update(extra)
    return {
        "type": type_,
        "message": message,
        "details": details if details is not None else name,
        "extra_info": extra_info,
    }


def validate_prompt(
    prompt: Any,
    registry: NodeRegistry,
    context: ExecutionContext | None,
    partial_targets: list[str] | None = None,
) -> ValidationResult:
    """Validate an API-format prompt; never raises for bad input, only reports it."""
    if prompt is None:
        return ValidationResult(False, prompt_error("no_prompt", "No prompt provided", "No prompt provided"))
    if not isinstance(prompt, dict):
        message = "prompt must be an object mapping node ids to nodes"
        return ValidationResult(False, prompt_error("invalid_prompt", message, type(prompt).__name__))
    try:
        return PromptValidator(prompt, registry, context).run(partial_targets)
    except Exception as exc:
        error = prompt_error(
            "exception_during_validation", "Exception when validating prompt", str(exc), _exception_info(exc)
        )
        return ValidationResult(False, error)


__all__ = ["PromptValidator", "ValidationResult", "full_type_name", "prompt_error", "validate_prompt"]
