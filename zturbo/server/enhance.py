"""The prompt enhancer on the server: `POST /zturbo/enhance` (the creator page's ✨ button) and the MCP
tool `enhance_prompt`.

An enhancement is a job like any other: a two-node graph (CLIPLoader → ZTurboPromptEnhance) through
the same queue, so it never runs on the engine at the same time as a generation, runs on a pool
worker when there is a pool, and is interruptible. Its text streams to the client that asked
(`client_id`) as `zturbo_enhance` WebSocket events while it is written; the answer is the node's
output in the history entry.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from zturbo.errors import GenerationError
from zturbo.models.prompt_enhancer import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_IDEA_CHARS,
    MAX_NEW_TOKENS_CAP,
    check_request,
)
from zturbo.sampling.noise import SEED_MAX
from zturbo.server.client_jobs import queue_graph, wait_for
from zturbo.server.creator import model_files
from zturbo.server.state import ServerState

ENHANCE_NODE = "2"


class EnhanceRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_IDEA_CHARS)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    max_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS_CAP)
    system: str | None = Field(default=None, max_length=8000)  # None or "": zturbo's system prompt
    client_id: str | None = Field(default=None, max_length=200)  # where the streamed text goes


def enhance_graph(body: EnhanceRequest, text_encoder: str) -> dict[str, Any]:
    inputs = {"clip": ["1", 0], "text": body.prompt, "seed": body.seed, "max_tokens": body.max_tokens}
    return {
        "1": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": text_encoder, "type": "lumina2", "device": "default"},
        },
        ENHANCE_NODE: {
            "class_type": "ZTurboPromptEnhance",
            "inputs": {**inputs, "system": body.system or ""},
        },
    }


def queue_enhance(state: ServerState, body: EnhanceRequest, client: str) -> str:
    """Validate and queue the enhancement; returns its prompt id (bad input: `InputError`, nothing queued)."""
    check_request(body.prompt, body.max_tokens)  # a blank idea: 400 now, not a failed job
    graph = enhance_graph(body, model_files(state.config.models_dir).text_encoder)
    return queue_graph(state, graph, client, body.client_id)


async def run_enhance(state: ServerState, body: EnhanceRequest, client: str) -> dict[str, Any]:
    """Queue, wait, answer {prompt: the enhanced prompt, prompt_id, seed}."""
    prompt_id = await asyncio.to_thread(queue_enhance, state, body, client)
    entry = await wait_for(state, prompt_id)
    texts = ((entry.get("outputs") or {}).get(ENHANCE_NODE) or {}).get("text") or []
    if not texts:
        raise GenerationError(f"the enhancement job {prompt_id} finished without a text")
    return {"prompt": str(texts[0]), "prompt_id": prompt_id, "seed": body.seed}
