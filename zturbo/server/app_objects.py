"""Per-app objects that only some routers need (preset store, model downloads), created on first use
and kept on `app.state`, so `ServerState` stays about the queue and nothing is module-global."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from starlette.requests import HTTPConnection

T = TypeVar("T")
_lock = threading.Lock()


def app_object(conn: HTTPConnection, name: str, factory: Callable[[], T]) -> T:
    """The app's `name` object, made by `factory` the first time it is asked for."""
    state = conn.app.state
    with _lock:
        found = getattr(state, name, None)
        if found is None:
            found = factory()
            setattr(state, name, found)
    return found
