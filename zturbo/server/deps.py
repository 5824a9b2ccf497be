"""FastAPI dependencies: routers ask for what they use, typed, instead of reaching into the app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from zturbo.server.config import ServerConfig
from zturbo.server.history import HistoryStore
from zturbo.server.queue import PromptQueue
from zturbo.server.state import ServerState


def get_state(conn: HTTPConnection) -> ServerState:
    return conn.app.state.zturbo


def get_config(request: Request) -> ServerConfig:
    return get_state(request).config


def get_queue(request: Request) -> PromptQueue:
    return get_state(request).queue


def get_history(request: Request) -> HistoryStore:
    return get_state(request).history


State = Annotated[ServerState, Depends(get_state)]
Config = Annotated[ServerConfig, Depends(get_config)]
Queue = Annotated[PromptQueue, Depends(get_queue)]
History = Annotated[HistoryStore, Depends(get_history)]
