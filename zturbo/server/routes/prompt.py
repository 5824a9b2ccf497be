"""`/prompt`: validate an API-format graph and queue it."""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from zturbo.server.compat import parsed_body
from zturbo.server.deps import State
from zturbo.server.queue import QueueItem
from zturbo.server.schemas import PromptRequest, PromptResponse, validation_message
from zturbo.server.state import DuplicatePromptError

log = logging.getLogger(__name__)
router = APIRouter(tags=["prompt"])

# Credentials a client may pass for partner nodes: given to the executor, never stored or listed.
SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def prompt_error(kind: str, message: str, details: str = "", extra: dict | None = None) -> JSONResponse:
    error = {"type": kind, "message": message, "details": details or message, "extra_info": extra or {}}
    return JSONResponse({"error": error, "node_errors": {}}, status_code=400)


def canonical_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


def _validate(state: Any, body: PromptRequest) -> Any:
    try:
        return state.executor.validate(body.prompt, body.partial_execution_targets)
    except Exception as exc:
        log.exception("validation raised")
        return prompt_error(
            "exception_during_validation",
            "Exception when validating prompt",
            str(exc),
            {"exception_type": type(exc).__name__, "traceback": traceback.format_tb(exc.__traceback__)},
        )


@router.get("/prompt")
def get_prompt(state: State) -> dict:
    return state.queue_info()


def _body(request: Request) -> PromptRequest | JSONResponse:
    """The body the JSON middleware parsed (off the event loop for large ones), as a PromptRequest."""
    _, value = parsed_body(request.scope)
    try:
        return PromptRequest.model_validate(value if value is not None else {})
    except ValidationError as exc:
        return prompt_error("invalid_prompt", validation_message(exc, "body"))


# A sync route: FastAPI runs it in a worker thread, so validating a large graph never blocks the loop.
@router.post("/prompt", response_model=PromptResponse)
def post_prompt(request: Request, state: State) -> Any:
    body = _body(request)
    if isinstance(body, JSONResponse):
        return body
    if body.prompt is None:
        return prompt_error("no_prompt", "No prompt provided")
    if not isinstance(body.prompt, dict):
        return prompt_error("invalid_prompt", "prompt must be an object mapping node ids to nodes")
    limit = state.config.max_prompt_nodes
    if len(body.prompt) > limit:
        return prompt_error(
            "prompt_too_large", f"prompt has {len(body.prompt)} nodes; at most {limit} are accepted"
        )
    prompt_id = body.prompt_id if body.prompt_id is not None else str(uuid.uuid4())
    if not canonical_uuid(prompt_id):
        return prompt_error(
            "invalid_prompt_id",
            "prompt_id must be a valid UUID",
            "prompt_id must be a UUID string in canonical lowercase hyphenated form",
        )
    if state.known(prompt_id):
        return prompt_error("duplicate_prompt_id", f"prompt {prompt_id} was already submitted")
    number = body.number if body.number is not None else state.queue.next_number(bool(body.front))
    result = _validate(state, body)
    if isinstance(result, JSONResponse):
        return result
    if not result.ok:
        log.warning("invalid prompt: %s", result.error)
        return JSONResponse({"error": result.error, "node_errors": result.node_errors}, status_code=400)
    extra_data = dict(body.extra_data)
    sensitive = {k: extra_data.pop(k) for k in SENSITIVE_KEYS if k in extra_data}
    if body.client_id is not None:
        extra_data["client_id"] = body.client_id
    extra_data["create_time"] = int(time.time() * 1000)
    item = QueueItem(number, prompt_id, body.prompt, extra_data, list(result.outputs), sensitive)
    try:
        state.submit(item)
    except DuplicatePromptError as exc:
        return prompt_error("duplicate_prompt_id", str(exc))
    return {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
