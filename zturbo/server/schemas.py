"""Request bodies, one model per route that takes JSON. Extra keys are allowed because ComfyUI clients
send fields we do not use; wrong types are still refused at the edge."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


def validation_message(exc: ValidationError, what: str) -> str:
    """Pydantic's errors as one line per field: `body.prompt_id: Input should be a valid string`."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in (what, *error.get("loc", ())))
        lines.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(lines) or f"{what}: invalid"


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class PromptRequest(_Body):
    prompt: Any = None
    client_id: str | None = None
    prompt_id: str | None = None
    extra_data: dict[str, Any] = Field(default_factory=dict)
    number: float | None = None
    front: bool | None = None
    partial_execution_targets: list[str] | None = None


class PromptResponse(BaseModel):
    prompt_id: str
    number: int | float  # int unless the client sent its own `number` (ComfyUI: `float(number)`)
    node_errors: Any


class ClearDelete(_Body):
    """`POST /queue` and `POST /history`: `{"clear": true}` and/or `{"delete": [ids]}`."""

    clear: bool = False
    delete: list[str] = Field(default_factory=list)


class InterruptRequest(_Body):
    prompt_id: str | None = None


class FreeRequest(_Body):
    unload_models: bool = False
    free_memory: bool = False


class CancelJobsRequest(_Body):
    job_ids: list[str]
